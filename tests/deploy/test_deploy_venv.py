"""Acceptance: a torch-free venv profiles an ORT and an OpenVINO artifact (and an .ort one).

The deploy side (what Dockerfile.jetson installs) is ``pip install edgekit`` with its core
dependencies only; this builds such a venv with pip's normal index, proves torch is not
importable there, and runs ``edgekit profile`` on artifacts compiled by the full install.
Slow: about half a minute with a warm pip cache, a few minutes without.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROFILE_ARGS = [
    "--seq-len",
    "16",
    "--batches",
    "1",
    "--seconds",
    "0.2",
    "--min-runs",
    "5",
    "--max-runs",
    "50",
    "--warmup",
    "2",
    "--cold-runs",
    "1",
    "--no-plots",
]


def _run(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def deploy_venv(tmp_path_factory) -> Path:
    """A fresh venv with ``edgekit[openvino]``: the core dependencies plus the OpenVINO runtime, no torch."""
    venv = tmp_path_factory.mktemp("deploy") / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{ROOT}[openvino]"], timeout=600, cwd=venv.parent)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return venv


def test_torch_is_not_installed_in_the_deploy_venv(deploy_venv):
    python = str(deploy_venv / "bin" / "python")
    no_torch = _run([python, "-c", "import torch"], timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    listed = _run([python, "-m", "pip", "list", "--format", "json"], timeout=60)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"edgekit", "numpy", "tokenizers", "onnxruntime", "openvino"} <= names
    assert not names & {"torch", "transformers", "safetensors"}


@pytest.mark.parametrize("target", ["ort-cpu", "openvino-cpu", "ort-mobile"])
def test_deploy_venv_profiles_the_artifact(deploy_venv, exported, tmp_path, target):
    src = exported("bert-classifier")
    out = tmp_path / "dist" / target
    compile_artifact(src, artifact.read_manifest(src), target, out)
    reports = tmp_path / "reports"
    cmd = [str(deploy_venv / "bin" / "edgekit"), "profile", str(out), "--out", str(reports), *PROFILE_ARGS]
    proc = _run(cmd, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((reports / f"{target}.profile.json").read_text())
    assert data["artifact"]["target"] == target
    assert data["first_token"]["model_only"]["n"] >= 5 and data["first_token"]["model_only"]["p50"] > 0
    runtimes = data["host"]["runtimes"]
    assert ("openvino" if target == "openvino-cpu" else "onnxruntime") in runtimes
    assert "torch" not in runtimes


def test_deploy_venv_runs_recipe_check_eval_and_report(deploy_venv, exported, tmp_path):
    """The deploy install (no torch) runs ``recipe check`` of a recipe with a quantize step, ``eval``
    of a compiled artifact (fidelity to PyTorch skipped with a note) and ``report show``."""
    edgekit = str(deploy_venv / "bin" / "edgekit")
    src = exported("bert-classifier")
    out = tmp_path / "dist" / "ort-cpu"
    compile_artifact(src, artifact.read_manifest(src), "ort-cpu", out)
    dev = tmp_path / "dev.jsonl"
    labels = artifact.read_manifest(src).source.labels
    dev.write_text("".join(json.dumps({"text": f"sentence number {i}", "label": labels[i % len(labels)]}) + "\n" for i in range(12)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nmodel: {json.loads((src / 'manifest.json').read_text())['source']['path']}\n"
        f"data: {{train: {dev}, dev: {dev}}}\nsteps: {{quantize: {{scheme: ternary-w2a8, steps: 2}}, lower: {{}}}}\n"
        "targets: [ort-cpu, {name: openvino-cpu, options: {threads: 2}}]\n"
    )
    check = _run([edgekit, "recipe", "check", str(recipe)], timeout=120, cwd=tmp_path)
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout[-2000:] + check.stderr[-2000:]
    bad = recipe.with_name("bad.yaml")
    bad.write_text(recipe.read_text().replace("threads: 2", "threds: 2"))
    refused = _run([edgekit, "recipe", "check", str(bad)], timeout=120, cwd=tmp_path)
    assert refused.returncode == 2 and "option threds" in refused.stderr and "Traceback" not in refused.stderr
    ev = _run([edgekit, "eval", str(out), "--data", str(dev), "--json", str(tmp_path / "e.json")], timeout=300, cwd=tmp_path)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["n"] == 12 and 0 <= report["metrics"]["accuracy"] <= 1
    prof = _run([edgekit, "profile", str(out), "--out", str(tmp_path / "rep"), *PROFILE_ARGS], timeout=300, cwd=tmp_path)
    assert prof.returncode == 0, prof.stderr[-2000:]
    show = _run([edgekit, "report", "show", str(tmp_path / "rep" / "ort-cpu.profile.json")], timeout=120, cwd=tmp_path)
    assert show.returncode == 0 and "ort-cpu" in show.stdout, show.stderr[-2000:]

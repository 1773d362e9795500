"""Acceptance: the wheel built from this tree installs in a fresh venv and works from there.

``python -m build --wheel`` (isolated build with hatchling from pip's index), a fresh venv with
the wheel and its core dependencies (pip's normal resolution, no torch), then the commands a user
runs first, from a folder outside the repository so nothing is found by accident: ``--version``,
``targets``, ``devices`` (profiles read from the wheel's ``edgekit/_devices``), and ``eval`` and
``profile`` of an artifact compiled by the full install. Slow: a minute or more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgekit import __version__
from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the 'build' package (pip install build) makes the wheel")
    out = tmp_path_factory.mktemp("wheel")
    _ok(_run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], timeout=600, cwd=out))
    (whl,) = out.glob("edgekit-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("wheelenv") / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], timeout=120))
    _ok(_run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=600, cwd=venv.parent))
    return venv


def test_the_wheel_holds_the_package_data_and_device_profiles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "edgekit"
    shipped = {
        p.relative_to(ROOT).as_posix() for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert shipped - names == set(), f"missing from the wheel: {sorted(shipped - names)}"
    devices = {f"edgekit/_devices/{p.name}" for p in (ROOT / "devices").glob("*.yaml")}
    assert devices and devices <= names
    assert {"edgekit/data/pydoc_sentences.txt", "edgekit/data/pydoc_pairs.jsonl", "edgekit/data/tensorrt_onnx_ops.json"} <= names
    assert not any(n.startswith(("tests/", "bench/", "edgekit/tests/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "edgekit = edgekit.cli.app:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_installed_commands_work_outside_the_repo(venv, tmp_path):
    exe = str(venv / "bin" / "edgekit")
    assert _ok(_run([exe, "--version"], timeout=120, cwd=tmp_path)).startswith(f"edgekit {__version__}")
    targets = _ok(_run([exe, "targets"], timeout=120, cwd=tmp_path))
    assert "ort-cpu" in targets and "openvino-cpu" in targets
    devices = _ok(_run([exe, "devices"], timeout=120, cwd=tmp_path))
    for p in (ROOT / "devices").glob("*.yaml"):
        assert p.stem in devices.replace("\n", ""), p.stem
    where = _ok(_run([str(venv / "bin" / "python"), "-c", "import edgekit.deploy.devices as d; print(d.devices_dir())"], 120, cwd=tmp_path))
    assert str(venv) in where and "_devices" in where
    no_torch = _run([str(venv / "bin" / "python"), "-c", "import torch"], timeout=60)
    assert no_torch.returncode != 0


def test_installed_edgekit_evaluates_and_profiles_an_artifact(venv, exported, tmp_path):
    src = exported("bert-classifier")
    out = tmp_path / "dist" / "ort-cpu"
    compile_artifact(src, artifact.read_manifest(src), "ort-cpu", out)
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"sentence number {i}", "label": i % 3}) + "\n" for i in range(8)))
    exe = str(venv / "bin" / "edgekit")
    _ok(_run([exe, "eval", str(out), "--data", str(data), "--no-fidelity", "--json", str(tmp_path / "eval.json")], 300, cwd=tmp_path))
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["n"] == 8 and 0.0 <= ev["metrics"]["accuracy"] <= 1.0
    args = ["--seq-len", "16", "--batches", "1", "--seconds", "0.2", "--min-runs", "5", "--max-runs", "50", "--cold-runs", "1"]
    _ok(_run([exe, "profile", str(out), "--out", str(tmp_path / "reports"), *args, "--no-plots"], 300, cwd=tmp_path))
    report = json.loads((tmp_path / "reports" / "ort-cpu.profile.json").read_text())
    assert report["artifact"]["target"] == "ort-cpu" and report["first_token"]["model_only"]["n"] >= 5

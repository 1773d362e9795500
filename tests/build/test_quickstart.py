"""The main job on the real default model (all-MiniLM-L6-v2), end to end. Slow: minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_on_the_default_model(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "quickstart", "--out", str(out), "--seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())  # the build manifest: quickstart is a plan run by the one runner
    # Every target whose artifacts run here; compile-only ones (jetson, and the NPU without
    # an NPU) are listed as skipped with the reason.
    assert set(m["artifacts"]) == {"ort-cpu", "openvino-cpu", "ort-mobile"}
    assert m["skipped"]["jetson"].startswith("compiles here, runs elsewhere")
    for name, a in m["artifacts"].items():
        metrics = json.loads((out / "reports" / f"{name}.eval.json").read_text())["metrics"]
        # Real retrieval on the shipped Python-reference pairs: a trained model ranks far
        # above chance (1/163); fidelity to the PyTorch model is near exact in fp32.
        assert metrics["recall@10"] > 0.8 and metrics["recall@1"] > 0.4
        assert metrics["fidelity_cosine_min"] > 0.9999
        assert a["parity"]["max_abs_diff"] < 1e-4 and a["accuracy"]["drop_points"] < 0.5
        profile = json.loads((out / "reports" / f"{name}.profile.json").read_text())
        ft = profile["first_token"]
        assert ft["seq_len"] == 128 and ft["model_only"]["p50"] > 0
        assert any(p["best"] for p in profile["throughput"])
    assert "p50" in proc.stdout and "R@10" in proc.stdout

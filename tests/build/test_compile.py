"""edgekit.build.compile: ONNX artifact -> target artifact, checked against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build import compile as compile_step
from edgekit.deploy import artifact, parity
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.errors import ParityError, TargetError


def test_runtime_failure_becomes_a_target_error_and_leaves_nothing(bert_onnx, tmp_path, monkeypatch):
    def broken(self, onnx_dir, manifest, options, out):
        (out / "half-written").write_text("x")
        raise RuntimeError("runtime said no\ntraceback details")

    monkeypatch.setattr(OrtCpuTarget, "compile", broken)
    with pytest.raises(TargetError, match="ort-cpu: compilation failed: runtime said no") as err:
        compile_step.compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), "ort-cpu", tmp_path / "ort-cpu")
    assert "traceback details" not in err.value.message
    assert isinstance(err.value.__cause__, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_leaves_no_artifact(bert_onnx, tmp_path, monkeypatch):
    real = parity.load_reference

    def shifted(path):
        feed, out = real(path)
        out = out.copy()
        out[3] = -out[3]
        return feed, out

    monkeypatch.setattr(parity, "load_reference", shifted)
    with pytest.raises(ParityError, match=r"ort-cpu \(onnxruntime .*\) output 'embeddings' differs from PyTorch: max abs diff"):
        compile_step.compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), "ort-cpu", tmp_path / "ort-cpu")
    assert list(tmp_path.iterdir()) == []


def test_explicit_tolerance_is_recorded(bert_onnx, tmp_path):
    tol = parity.Tolerance(atol=5e-3, min_cosine=0.999)
    manifest = compile_step.compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), "ort-cpu", tmp_path / "ort-cpu", tolerance=tol)
    assert manifest.settings["tolerance"] == tol.model_dump()
    assert manifest.parity.atol == 5e-3 and manifest.parity.min_required == 0.999
    assert np.isfinite(manifest.parity.min_cosine)

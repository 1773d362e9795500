"""edgekit.build.compile: checkpoint or ONNX artifact -> target artifact, checked against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build import compile as compile_step
from edgekit.deploy import artifact, parity
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.errors import ConfigError, ParityError, TargetError


def test_compile_from_a_checkpoint_exports_first(checkpoints, tmp_path):
    out, manifest = compile_step.compile(checkpoints["roberta-classifier"], "ort-cpu", tmp_path / "rc")
    assert out == tmp_path / "rc" / "ort-cpu"
    onnx_manifest = artifact.read_manifest(tmp_path / "rc" / compile_step.ONNX_DIR)
    assert onnx_manifest.kind == "onnx"
    assert manifest.parent == artifact.manifest_sha256(tmp_path / "rc" / compile_step.ONNX_DIR)
    assert manifest.source.labels == ["negative", "neutral", "positive"]
    assert artifact.read_manifest(out) == manifest
    assert compile_step.is_artifact(out) and not compile_step.is_artifact(checkpoints["roberta-classifier"])


def test_compile_from_an_onnx_artifact_does_not_export_again(bert_onnx, tmp_path):
    out, manifest = compile_step.compile(bert_onnx, "ort-cpu", tmp_path / "be")
    assert sorted(p.name for p in (tmp_path / "be").iterdir()) == ["ort-cpu"]
    assert manifest.parent == artifact.manifest_sha256(bert_onnx)


def test_compile_from_a_compiled_artifact_is_refused(bert_onnx, tmp_path):
    out, _ = compile_step.compile(bert_onnx, "ort-cpu", tmp_path / "first")
    with pytest.raises(ConfigError, match="is a compiled ort-cpu artifact"):
        compile_step.compile(out, "openvino-cpu", tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_unknown_target_fails_before_export(checkpoints, tmp_path):
    with pytest.raises(TargetError, match="unknown target 'ort-gpu'") as err:
        compile_step.compile(checkpoints["bert-embedding"], "ort-gpu", tmp_path / "x")
    assert "ort-cpu" in err.value.hint
    assert not (tmp_path / "x").exists()


def test_bad_option_fails_before_export(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="option optimisation"):
        compile_step.compile(checkpoints["bert-embedding"], "ort-cpu", tmp_path / "x", options={"optimisation": "all"})
    assert not (tmp_path / "x").exists()


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

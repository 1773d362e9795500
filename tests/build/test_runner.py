"""edgekit.build.runner: a plan run through the step cache, its results laid out as the plan asks."""

from __future__ import annotations

import pytest

from edgekit.build import plan, runner
from edgekit.deploy import artifact
from edgekit.errors import ConfigError, TargetError


def compile_(model, target: str, out, options=None):
    """What ``edgekit compile MODEL -t TARGET --out OUT`` runs."""
    runner.run(plan.for_compile(str(model), out, [(target, options or {})]), say=lambda m: None)
    return out / target, artifact.read_manifest(out / target)


def test_compile_from_a_checkpoint_exports_first(checkpoints, tmp_path):
    out, manifest = compile_(checkpoints["roberta-classifier"], "ort-cpu", tmp_path / "rc")
    assert out == tmp_path / "rc" / "ort-cpu"
    onnx_manifest = artifact.read_manifest(tmp_path / "rc" / runner.ONNX_DIR)
    assert onnx_manifest.kind == "onnx"
    assert manifest.parent == artifact.manifest_sha256(tmp_path / "rc" / runner.ONNX_DIR)
    assert manifest.source.labels == ["negative", "neutral", "positive"]
    assert artifact.read_manifest(out) == manifest


def test_compile_from_an_onnx_artifact_does_not_export_again(bert_onnx, tmp_path):
    out, manifest = compile_(bert_onnx, "ort-cpu", tmp_path / "be")
    assert sorted(p.name for p in (tmp_path / "be").iterdir()) == ["ort-cpu"]
    assert manifest.parent == artifact.manifest_sha256(bert_onnx)


def test_compile_from_a_compiled_artifact_is_refused(bert_onnx, tmp_path):
    out, _ = compile_(bert_onnx, "ort-cpu", tmp_path / "first")
    with pytest.raises(ConfigError, match="is a compiled ort-cpu artifact"):
        compile_(out, "openvino-cpu", tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_unknown_target_fails_before_export(checkpoints, tmp_path):
    with pytest.raises(TargetError, match="unknown target 'ort-gpu'") as err:
        compile_(checkpoints["bert-embedding"], "ort-gpu", tmp_path / "x")
    assert "ort-cpu" in err.value.hint
    assert not (tmp_path / "x").exists()


def test_bad_option_fails_before_export(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="option optimisation"):
        compile_(checkpoints["bert-embedding"], "ort-cpu", tmp_path / "x", {"optimisation": "all"})
    assert not (tmp_path / "x").exists()

"""edgekit.build.ptq: ONNX Runtime static QDQ PTQ and NNCF PTQ (into an openvino-cpu artifact), calibrated on real texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.build.compile import compile_artifact
from edgekit.build.ptq import TOLERANCE, quantize_nncf, quantize_onnx
from edgekit.deploy import data
from edgekit.deploy.runtime import Predictor
from edgekit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "texts.txt"
    path.write_text("\n".join(data.sample_texts()[::20][:48]) + "\n")
    return path


def test_ort_static_ptq(exported, calib, tmp_path, texts):
    src = exported("distilbert-classifier")
    manifest = quantize_onnx(src, tmp_path / "ptq", calibration=calib, samples=32)
    assert manifest.kind == "onnx" and manifest.precision == "int8" and manifest.parity.passed
    ptq = manifest.settings["ptq"]
    assert ptq["calibration"]["texts"] == 32 and ptq["options"]["quant_format"] == "QDQ"
    assert ptq["onnxruntime_int8"]["all_int8"] and ptq["onnxruntime_int8"]["integer_total"] == 16
    with Predictor(tmp_path / "ptq") as pred:
        assert pred.predict(texts[:2]).shape == (2, 3)
    # an INT8 artifact compiles for ort-cpu as it is, its INT8 execution checked again
    compiled = compile_artifact(tmp_path / "ptq", manifest, "ort-cpu", tmp_path / "ort-cpu")
    assert compiled.precision == "int8" and compiled.settings["int8"]["all_int8"]
    assert compiled.settings["tolerance"] == TOLERANCE.model_dump()
    # a field given on the command line (compile --min-agreement) is laid over the artifact's own tolerance, not fp32's
    loose = compile_artifact(tmp_path / "ptq", manifest, "ort-cpu", tmp_path / "loose", tolerance={"min_argmax_agreement": 0.2})
    assert loose.settings["tolerance"] == {**TOLERANCE.model_dump(), "min_argmax_agreement": 0.2}
    with pytest.raises(ConfigError, match="already int8"):
        quantize_onnx(tmp_path / "ptq", tmp_path / "again", calibration=calib)


def test_ort_ptq_with_relative_paths(exported, calib, tmp_path, monkeypatch):
    # quantize_static works in a scratch directory: relative inputs must still resolve
    import shutil

    shutil.copytree(exported("bert-classifier"), tmp_path / "src")
    shutil.copy(calib, tmp_path / "texts.txt")
    monkeypatch.chdir(tmp_path)
    manifest = quantize_onnx("src", "out/ptq", calibration="texts.txt", samples=16)
    assert manifest.precision == "int8" and (tmp_path / "out" / "ptq" / manifest.model_file).exists()


def test_ptq_bad_calibration(exported, tmp_path):
    src = exported("distilbert-classifier")
    with pytest.raises(DataError, match="no such data file"):
        quantize_onnx(src, tmp_path / "x", calibration=tmp_path / "missing.txt")
    few = tmp_path / "few.txt"
    few.write_text("one text\nanother\n")
    with pytest.raises(DataError, match="only 2 calibration texts"):
        quantize_onnx(src, tmp_path / "x", calibration=few)
    assert not (tmp_path / "x").exists()


@pytest.mark.openvino
def test_nncf_ptq_on_openvino(exported, calib, tmp_path, texts):
    pytest.importorskip("nncf")
    from edgekit.deploy import artifact

    src = exported("bert-classifier")
    manifest = quantize_nncf(src, tmp_path / "ov" / "openvino-cpu", calibration=calib, samples=24, options={"seq_lens": "16,64"})
    assert (manifest.kind, manifest.target, manifest.precision) == ("compiled", "openvino-cpu", "int8") and manifest.parity.passed
    ptq = manifest.settings["ptq"]
    assert ptq["method"] == "nncf.quantize" and ptq["calibration"]["texts"] == 24 and ptq["fidelity"]["passed"]
    assert manifest.settings["tolerance"] == TOLERANCE.model_dump() and manifest.parity.atol == TOLERANCE.atol
    assert manifest.settings["int8"]["int8"] >= 12 and set(manifest.settings["int8"]["precisions"]) & {"u8", "i8"}
    assert manifest.settings["buckets"] == [16, 64]  # the target's own options apply to the PTQ artifact
    assert artifact.read_manifest(tmp_path / "ov" / "openvino-cpu") == manifest
    with Predictor(tmp_path / "ov" / "openvino-cpu") as pred:
        assert pred.predict(texts[:2]).shape == (2, 3)
    # an INT8 or compiled source is refused; so is a bad option, before any calibration
    with pytest.raises(ConfigError, match="PTQ takes an exported ONNX artifact"):
        quantize_nncf(tmp_path / "ov" / "openvino-cpu", tmp_path / "again", calibration=calib)
    with pytest.raises(ConfigError, match="target openvino-cpu: option int8"):
        quantize_nncf(src, tmp_path / "x", calibration=calib, options={"int8": "nncf"})
    assert not (tmp_path / "x").exists()

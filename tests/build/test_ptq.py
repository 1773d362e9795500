"""edgekit.build.ptq: ONNX Runtime static QDQ PTQ and NNCF PTQ (openvino-cpu int8=nncf), calibrated on real texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.build.compile import compile_artifact
from edgekit.build.ptq import quantize_onnx
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
def test_nncf_ptq_on_openvino(exported, calib, tmp_path):
    pytest.importorskip("nncf")
    src = exported("bert-classifier")
    from edgekit.deploy import artifact

    manifest = compile_artifact(
        src,
        artifact.read_manifest(src),
        "openvino-cpu",
        tmp_path / "ov",
        options={"int8": "nncf", "calibration": str(calib), "samples": 24},
    )
    assert manifest.precision == "int8" and manifest.parity.passed
    assert manifest.settings["ptq"]["method"] == "nncf.quantize" and manifest.settings["ptq"]["calibration"]["texts"] == 24
    assert manifest.settings["int8"]["int8"] >= 12 and set(manifest.settings["int8"]["precisions"]) & {"u8", "i8"}
    with pytest.raises(ConfigError, match="calibration"):
        compile_artifact(src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "ov2", options={"int8": "nncf"})

"""Target openvino-cpu (edgekit/targets/openvino.py): OpenVINO IR on the CPU plugin."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, parity
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import Session
from edgekit.deploy.targets.base import runtime_version
from edgekit.deploy.targets.openvino import MODEL_FILE, OpenVinoCpuTarget
from edgekit.errors import ArtifactError, ConfigError

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino

TARGET = "openvino-cpu"
MODELS = ("bert-embedding", "distilbert-classifier")


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory) -> dict[str, tuple]:
    """name -> (artifact dir, manifest) of each model compiled for openvino-cpu with default options."""
    root = tmp_path_factory.mktemp("openvino")
    result = {}
    for name in MODELS:
        src = exported(name)
        out = root / name / TARGET
        result[name] = (out, compile_artifact(src, artifact.read_manifest(src), TARGET, out))
    return result


@pytest.mark.parametrize("name", MODELS)
def test_compiled_artifact_passes_parity(compiled, exported, name):
    out, manifest = compiled[name]
    assert (manifest.kind, manifest.target, manifest.model_file, manifest.precision) == ("compiled", TARGET, MODEL_FILE, "fp32")
    assert manifest.parity.passed is True
    assert manifest.parity.max_abs_diff < 1e-4
    assert manifest.parity.runtime.startswith("openvino-cpu (openvino ")
    assert manifest.parent == artifact.manifest_sha256(exported(name))
    assert {MODEL_FILE, "model.bin", "tokenizer.json", parity.REFERENCE} <= set(manifest.files)
    assert artifact.read_manifest(out) == manifest


def test_manifest_has_runtime_version_and_settings(compiled):
    _, manifest = compiled["bert-embedding"]
    assert manifest.runtime == {"openvino": runtime_version(ov)}
    assert manifest.settings["device"] == "CPU"
    # fp32 asked explicitly: OpenVINO would otherwise pick bf16 on CPUs that have it.
    assert manifest.settings["config"] == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert manifest.settings["tolerance"] == parity.Tolerance().model_dump()


@pytest.mark.parametrize("name", MODELS)
def test_predictor_matches_torch(compiled, encoders, texts, name):
    out, _ = compiled[name]
    encoder = encoders(name)
    with Predictor(out) as predictor:
        assert isinstance(predictor.session, Session)
        assert isinstance(predictor.target, OpenVinoCpuTarget)
        got = predictor.predict(texts, batch=2)
        again = predictor.predict(texts[:1])
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)
    # Outputs are copies: a later inference must not overwrite an earlier result.
    np.testing.assert_allclose(got[:1], again, atol=1e-6)


def test_fp16_uses_the_fp16_tolerance_and_records_the_options(exported, tmp_path):
    src = exported("bert-embedding")
    manifest = compile_artifact(
        src,
        artifact.read_manifest(src),
        TARGET,
        tmp_path / TARGET,
        options={"precision": "fp16", "hint": "THROUGHPUT", "threads": 1, "streams": 1},
    )
    assert manifest.precision == "fp16"
    assert manifest.settings["tolerance"] == parity.TOLERANCES["fp16"].model_dump()
    assert manifest.settings["config"] == {
        "INFERENCE_PRECISION_HINT": "f16",
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": "1",
        "NUM_STREAMS": "1",
    }
    assert manifest.parity.passed


@pytest.mark.parametrize(
    ("options", "field"), [({"precision": "int3"}, "precision"), ({"hint": "FAST"}, "hint"), ({"device": "GPU"}, "device")]
)
def test_invalid_option_names_the_field(bert_onnx, tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"target openvino-cpu: option {field}:") as err:
        compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), TARGET, tmp_path / TARGET, options=options)
    assert "precision" in err.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", [MODEL_FILE, "model.bin"])
def test_tampered_model_file_is_detected(compiled, tmp_path, victim):
    out = shutil.copytree(compiled["bert-embedding"][0], tmp_path / TARGET)
    raw = bytearray((out / victim).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (out / victim).write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=f"{victim} does not match its sha256"):
        artifact.read_manifest(out)
    with pytest.raises(ArtifactError):
        Predictor(out)

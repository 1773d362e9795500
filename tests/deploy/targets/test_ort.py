"""Target ort-cpu (edgekit/targets/ort.py): offline-optimized ONNX Runtime model on the CPU."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, parity
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import Session
from edgekit.deploy.targets.ort import MODEL_FILE, OrtCpuTarget
from edgekit.errors import ArtifactError, ConfigError

TARGET = "ort-cpu"
MODELS = ("bert-embedding", "distilbert-classifier")


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory) -> dict[str, tuple]:
    """name -> (artifact dir, manifest) of each model compiled for ort-cpu with default options."""
    root = tmp_path_factory.mktemp("ort")
    result = {}
    for name in MODELS:
        src = exported(name)
        out = root / name / TARGET
        result[name] = (out, compile_artifact(src, artifact.read_manifest(src), TARGET, out))
    return result


@pytest.mark.parametrize("name", MODELS)
def test_compiled_artifact_passes_parity(compiled, exported, name):
    out, manifest = compiled[name]
    assert (manifest.kind, manifest.target, manifest.model_file) == ("compiled", TARGET, MODEL_FILE)
    assert manifest.parity.passed is True
    assert manifest.parity.max_abs_diff < 1e-4
    assert manifest.parity.runtime.startswith(f"ort-cpu (onnxruntime {onnxruntime.__version__}")
    assert manifest.parent == artifact.manifest_sha256(exported(name))
    assert manifest.source == artifact.read_manifest(exported(name)).source
    assert {MODEL_FILE, "tokenizer.json", parity.REFERENCE} <= set(manifest.files)
    assert artifact.read_manifest(out) == manifest


def test_manifest_has_runtime_version_and_settings(compiled):
    _, manifest = compiled["bert-embedding"]
    assert manifest.runtime == {"onnxruntime": onnxruntime.__version__}
    assert manifest.precision == "fp32"
    assert manifest.settings["optimization_saved"] == "extended"
    assert manifest.settings["provider"] == "CPUExecutionProvider"
    assert manifest.settings["tolerance"] == parity.Tolerance().model_dump()


@pytest.mark.parametrize("name", MODELS)
def test_predictor_matches_torch(compiled, encoders, texts, name):
    out, _ = compiled[name]
    encoder = encoders(name)
    with Predictor(out) as predictor:
        assert isinstance(predictor.session, Session)
        assert isinstance(predictor.target, OrtCpuTarget)
        got = predictor.predict(texts, batch=2)
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)


def test_options_are_recorded(exported, tmp_path):
    src = exported("bert-embedding")
    manifest = compile_artifact(
        src, artifact.read_manifest(src), TARGET, tmp_path / TARGET, options={"optimization": "basic", "threads": 1}
    )
    assert manifest.settings["optimization_saved"] == "basic"
    assert manifest.settings["threads"] == 1
    assert manifest.parity.passed


@pytest.mark.parametrize(
    ("options", "field"), [({"bogus": 1}, "bogus"), ({"optimization": "max"}, "optimization"), ({"threads": "many"}, "threads")]
)
def test_invalid_option_names_the_field(bert_onnx, tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"target ort-cpu: option {field}:") as err:
        compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), TARGET, tmp_path / TARGET, options=options)
    assert "optimization" in err.value.hint and "threads" in err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_tampered_model_file_is_detected(compiled, tmp_path):
    import shutil

    out = shutil.copytree(compiled["bert-embedding"][0], tmp_path / TARGET)
    with open(out / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=f"{MODEL_FILE} does not match its sha256"):
        artifact.read_manifest(out)
    with pytest.raises(ArtifactError):
        Predictor(out)


def _add_layernorm(path):
    """A residual Add into a LayerNormalization: the pattern ONNX Runtime's SkipLayerNormFusion rewrites."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "s", 8]) for n in ("a", "b")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", 8])
    inits = [numpy_helper.from_array(rng.normal(size=8).astype(np.float32), n) for n in ("scale", "bias")]
    nodes = [helper.make_node("Add", ["a", "b"], ["h"]), helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "residual", ins, [out], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_sessions_keep_add_and_layernorm_unfused(tmp_path):
    """SkipLayerNormFusion made lowered exit segments slower (see DISABLED_OPTIMIZERS): edgekit's sessions leave it off."""
    import onnx

    from edgekit.deploy.targets.ort import new_session, session_options

    model = _add_layernorm(tmp_path / "m.onnx")
    feed = {n: np.random.default_rng(i).normal(size=(1, 5, 8)).astype(np.float32) for i, n in enumerate("ab")}
    ops, outs = {}, {}
    for name, make in [("plain", lambda so: onnxruntime.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])),
                       ("edgekit", lambda so: new_session(onnxruntime, model, so))]:  # fmt: skip
        so = session_options(onnxruntime, "all", 1)
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        outs[name] = make(so).run(None, feed)[0]
        ops[name] = {n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node}
    assert "SkipLayerNormalization" in ops["plain"]  # the runtime's default fuses it (else this test proves nothing)
    assert "SkipLayerNormalization" not in ops["edgekit"] and "LayerNormalization" in ops["edgekit"]
    np.testing.assert_allclose(outs["edgekit"], outs["plain"], atol=1e-5)

"""ort-cpu's transformer fusions (edgekit/deploy/targets/ort_fusion.py): ONNX Runtime's BERT optimizer at compile time."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import ort_fusion
from edgekit.deploy.targets.ort import MODEL_FILE
from edgekit.errors import ConfigError

TARGET = "ort-cpu"
# What the optimizer fuses in each tiny model (2 layers): RoBERTa's position ids (padding
# offset) do not match the EmbedLayerNormalization pattern, so its embeddings stay as they are.
EXPECTED = {
    "bert-embedding": {"Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4},
    "distilbert-classifier": {"Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4},
    "roberta-classifier": {"Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4},
}


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory):
    """(name, fusion) -> (artifact dir, manifest), each compiled once."""
    root = tmp_path_factory.mktemp("ort-fusion")
    cache: dict = {}

    def get(name: str, fusion: str = "auto"):
        if (name, fusion) not in cache:
            src, out = exported(name), root / f"{name}-{fusion}" / TARGET
            cache[name, fusion] = (out, compile_artifact(src, artifact.read_manifest(src), TARGET, out, options={"fusion": fusion}))
        return cache[name, fusion]

    return get


def op_counts(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", EXPECTED)
def test_attention_dims_are_read_from_the_graph(exported, name):
    src = exported(name)
    model = onnx.load(str(src / artifact.read_manifest(src).model_file))
    assert ort_fusion.attention_dims(model) == (2, 32)  # conftest: 2 heads, hidden 32


@pytest.mark.parametrize("name", EXPECTED)
def test_fusions_are_applied_counted_and_pass_parity(compiled, name):
    out, manifest = compiled(name)
    fusion = manifest.settings["fusion"]
    assert fusion["mode"] == "auto" and fusion["plan"] == "all"
    assert fusion["applied"] == EXPECTED[name]
    assert (fusion["num_heads"], fusion["hidden_size"]) == (2, 32)
    # the saved artifact holds the fused kernels, and none of the ops they replaced
    ops = op_counts(out / MODEL_FILE)
    assert all(ops[op] == n for op, n in EXPECTED[name].items())
    assert ops["Softmax"] == 0 and ops["Erf"] == 0
    assert not (out / "_fused.onnx").exists()
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-4


@pytest.mark.parametrize("name", ["bert-embedding", "roberta-classifier"])
def test_fused_artifact_matches_torch_on_padded_batches(compiled, encoders, texts, name):
    """Texts of different lengths in one batch: the raw attention mask keeps padding masked exactly."""
    out, _ = compiled(name)
    encoder = encoders(name)
    with Predictor(out) as predictor:
        got = predictor.predict(texts, batch=len(texts))
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)


def test_fusion_off_gives_the_generic_optimized_graph(compiled, exported, tmp_path):
    out, manifest = compiled("bert-embedding", "off")
    assert manifest.settings["fusion"] == {"mode": "off", "applied": {}}
    # what ort-cpu saves without fusions: ONNX Runtime's own "extended" optimization of the export
    src = exported("bert-embedding")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "generic.onnx")
    ort.InferenceSession(str(src / artifact.read_manifest(src).model_file), so, providers=["CPUExecutionProvider"])
    assert op_counts(out / MODEL_FILE) == op_counts(tmp_path / "generic.onnx")
    assert op_counts(out / MODEL_FILE)["Attention"] == 0
    assert manifest.parity.passed


@pytest.mark.parametrize("value", ["on", "all", True, 1])
def test_unknown_fusion_value_is_refused(bert_onnx, tmp_path, value):
    with pytest.raises(ConfigError, match="target ort-cpu: option fusion:"):
        compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), TARGET, tmp_path / TARGET, options={"fusion": value})
    assert not (tmp_path / TARGET).exists()


def test_a_graph_with_no_encoder_pattern_is_left_as_it_is(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    report = ort_fusion.fuse(tmp_path / "m.onnx", tmp_path / "fused.onnx")
    assert report["applied"] == {} and report["plan"] is None and "no pattern matched" in report["why"]
    assert report["num_heads"] is None and "attention left unfused" in report["note"]
    assert not (tmp_path / "fused.onnx").exists()


def test_fusing_imports_no_torch(exported, tmp_path):
    """The fusions run on the deploy side: onnxruntime's optimizer, without torch or transformers."""
    src = exported("bert-embedding")
    code = (
        "import sys\nfrom pathlib import Path\nfrom edgekit.deploy.targets import ort_fusion\n"
        f"r = ort_fusion.fuse(Path({str(src / 'model.onnx')!r}), Path({str(tmp_path / 'f.onnx')!r}))\n"
        "assert r['applied'].get('Attention') == 2, r\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def lowered_cores(checkpoints, encoders, tmp_path_factory):
    """(tiny model, attention bits: 32 float core, 8 quantized) -> (its lowered ternary-w2a8 artifact, manifest), built once."""
    from conftest import quantized_checkpoint

    from edgekit.build.lower import lower
    from edgekit.build.quant.config import make_config

    root = tmp_path_factory.mktemp("qattention")
    built: dict = {}

    def get(name: str, bits: int):
        if (name, bits) not in built:
            scheme = make_config("ternary-w2a8", attention_bits=bits)
            ckpt = quantized_checkpoint(checkpoints, encoders, root / f"{name}-ckpt-{bits}", name, scheme)
            built[name, bits] = (root / f"{name}-{bits}", lower(ckpt, root / f"{name}-{bits}"))
        return built[name, bits]

    return get


@pytest.mark.parametrize("name", ["bert-classifier", "distilbert-classifier", "roberta-classifier"])
def test_qattention_runs_each_layer_as_one_integer_kernel(lowered_cores, tmp_path, texts, name):
    src, manifest = lowered_cores(name, 32)
    plain = compile_artifact(src, manifest, TARGET, tmp_path / "off", options={"fusion": "off"})
    fused = compile_artifact(src, manifest, TARGET, tmp_path / "qattention", options={"fusion": "qattention"})
    fusion = fused.settings["fusion"]
    assert fusion["plan"] == "qattention" and fusion["applied"] == {"QAttention": 2}  # conftest: 2 layers; no other fusion
    ops = op_counts(tmp_path / "qattention" / MODEL_FILE)
    assert ops["QAttention"] == 2 and ops["Softmax"] == 0  # the float attention core is inside the fused kernel
    assert plain.settings["int8"]["all_int8"] and fused.settings["int8"]["all_int8"]
    assert fused.parity.passed
    with Predictor(tmp_path / "off") as a, Predictor(tmp_path / "qattention") as b:
        x, y = a.predict(texts, batch=len(texts)), b.predict(texts, batch=len(texts))
    assert (x.argmax(-1) == y.argmax(-1)).mean() >= 0.9
    np.testing.assert_allclose(y, x, atol=0.1)  # one input scale for Q, K and V: close, not bit-exact


def test_qattention_is_refused_where_the_attention_core_is_quantized(lowered_cores, tmp_path):
    src, manifest = lowered_cores("bert-classifier", 8)
    compiled = compile_artifact(src, manifest, TARGET, tmp_path / "out", options={"fusion": "qattention"})
    fusion = compiled.settings["fusion"]
    assert fusion["plan"] is None and fusion["applied"] == {}  # nothing fused: the graph is compiled as with fusion=off
    assert fusion["why"].startswith("qattention: the attention pattern matched no layer")
    assert op_counts(tmp_path / "out" / MODEL_FILE)["QAttention"] == 0
    assert compiled.settings["int8"]["all_int8"] and compiled.parity.passed


def test_qattention_on_a_float_graph_fuses_nothing_and_says_why(compiled):
    out, manifest = compiled("bert-embedding", "qattention")
    fusion = manifest.settings["fusion"]
    assert fusion["applied"] == {} and fusion["why"].startswith("qattention: the graph is not quantized")
    assert op_counts(out / MODEL_FILE)["Attention"] == 0 and manifest.parity.passed


def test_autotune_offers_qattention_only_to_a_float_attention_core(lowered_cores):
    from edgekit.deploy.targets.ort import OrtCpuTarget, OrtOptions

    def candidate(bits):
        cands = OrtCpuTarget().tune_candidates(OrtOptions(), lowered_cores("bert-classifier", bits)[1])
        return next(c for c in cands if c["name"] == "fusion=qattention")

    assert "skip" not in candidate(32)
    assert candidate(8)["skip"].startswith("the attention core is quantized (8 bits)")

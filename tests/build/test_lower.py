"""edgekit.build.lower (+ edgekit.build.qdq, edgekit.deploy.int8check): quantized checkpoint -> INT8 QDQ ONNX artifact.

Parity is against the fake-quant torch model with ``edgekit.build.lower.TOLERANCE`` (the codes are
exact; only the float order of the scales around each integer matmul differs, so the tiny
models match to ~1e-6); these tests also ask ONNX Runtime and OpenVINO themselves whether the
quantized matmuls run in INT8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import quantized_checkpoint

from edgekit.build.compile import compile_artifact
from edgekit.build.lower import TOLERANCE, lower
from edgekit.build.quant import make_config
from edgekit.deploy import artifact, int8check, packing
from edgekit.deploy.runtime import Predictor
from edgekit.errors import ArtifactError, ConfigError

CASES = [
    ("bert-classifier", "bit-w1a1"),
    ("roberta-embedding", "ternary-w2a8"),
    ("distilbert-classifier", "bibert-w1e1a1"),
    ("bert-embedding", "ternary-w2e2a8"),
]


def reseal(path):
    """Rewrite the manifest's own sha256 after editing it, as someone who edits both would."""
    (path / artifact.MANIFEST_SHA256).write_text(f"{artifact.manifest_sha256(path)}  {artifact.MANIFEST}\n")


@pytest.fixture(scope="module")
def lowered(checkpoints, encoders, tmp_path_factory):
    """(name, scheme) -> (lowered artifact dir, manifest), each lowered once."""
    root = tmp_path_factory.mktemp("lowered")
    cache: dict = {}

    def get(name: str, scheme: str):
        if (name, scheme) not in cache:
            ckpt = quantized_checkpoint(checkpoints, encoders, root / f"{name}-{scheme}-ckpt", name, scheme)
            cache[name, scheme] = (root / f"{name}-{scheme}", lower(ckpt, root / f"{name}-{scheme}"))
        return cache[name, scheme]

    return get


def full_model(path: Path) -> onnx.ModelProto:
    manifest = artifact.read_manifest(path)
    return onnx.load_from_string(packing.model_bytes(path, manifest.model_file, manifest.settings.get("packed")))


@pytest.mark.parametrize("name,scheme", CASES)
def test_lowered_matches_fake_quant_and_runs_int8(lowered, name, scheme):
    path, manifest = lowered(name, scheme)
    assert manifest.kind == "onnx" and manifest.precision == "int8"
    assert manifest.parity.passed and manifest.parity.atol == TOLERANCE.atol
    assert manifest.parity.max_abs_diff < 1e-4  # observed ~1e-6: the codes are exact
    if manifest.task == "classifier":
        assert manifest.parity.argmax_agreement == 1.0
    else:
        assert manifest.parity.min_cosine > 0.99999
    # 6 linears + 2 attention matmuls per layer, 2 layers: all INT8 in ORT's own optimized graph
    int8 = manifest.settings["lowered"]["onnxruntime_int8"]
    assert int8["expected_int8"] == 16 and int8["integer_total"] == 16 and int8["all_int8"] and not int8["float_fallback"]
    assert set(int8["integer_ops"]) <= {"MatMulIntegerToFloat", "QLinearMatMul"}

    model = full_model(path)
    inits = {t.name: t for t in model.graph.initializer}
    dq_weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dq_weights) == 12  # one per linear
    for node in dq_weights:
        codes = onnx.numpy_helper.to_array(inits[node.input[0]])
        scale = onnx.numpy_helper.to_array(inits[node.input[1]])
        assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 0, 1}
        assert scale.shape == (codes.shape[1],) and (scale > 0).all()  # one scale per output channel
        assert next(a.i for a in node.attribute if a.name == "axis") == 1
    if "e2" in scheme or "e1" in scheme:  # low-bit embeddings: an int8 table gathered, never float
        assert any(t.data_type == onnx.TensorProto.INT8 and "word_embeddings" in t.name for t in inits.values())


def test_optimized_graph_has_integer_matmuls(lowered, tmp_path):
    path, manifest = lowered("bert-classifier", "bit-w1a1")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(
        packing.model_bytes(path, manifest.model_file, manifest.settings["packed"]), so, providers=["CPUExecutionProvider"]
    )
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 16
    assert "MatMul" not in ops  # the only float matmuls left are the pooler/classifier Gemms
    assert [op for op in ops if "Gemm" in op]


@pytest.mark.parametrize("name,scheme", [("bert-classifier", "bit-w1a1"), ("roberta-embedding", "ternary-w2a8")])
def test_ort_cpu_fuses_the_lowered_graph_and_keeps_integer_matmuls(lowered, tmp_path, name, scheme):
    """ort-cpu's transformer fusions on a QDQ graph: the norms and GELUs fuse, every quantized matmul stays INT8."""
    path, manifest = lowered(name, scheme)
    fused = compile_artifact(path, manifest, "ort-cpu", tmp_path / "fused", options={"tune": "off", "fusion": "auto"})
    plain = compile_artifact(path, manifest, "ort-cpu", tmp_path / "plain", options={"tune": "off"})  # default: fusion off
    fusion = fused.settings["fusion"]
    # the attention pattern does not match around QDQ matmuls (float Q/K/V only): it stays unfused
    assert fusion["applied"] == {"BiasGelu": 2, "SkipLayerNormalization": 4} and fusion["plan"] == "all"
    for m in (fused, plain):
        int8 = m.settings["int8"]
        assert int8["expected_int8"] == 16 and int8["integer_total"] == 16 and int8["all_int8"] and not int8["float_fallback"]
        assert m.parity.passed and m.parity.max_abs_diff < 1e-4
    ops = {p: [n.op_type for n in full_model(tmp_path / p).graph.node] for p in ("fused", "plain")}
    assert ops["fused"].count("SkipLayerNormalization") == 4 and "SkipLayerNormalization" not in ops["plain"]
    assert ops["fused"].count("MatMulIntegerToFloat") + ops["fused"].count("QLinearMatMul") == 16
    # each linear layer's bias Add is folded into its MatMulIntegerToFloat (q, k, v, attention out, ffn out of 2 layers;
    # the ffn-in bias went into BiasGelu), and the outputs still pass parity (above)
    with_bias = {
        p: sum(1 for n in full_model(tmp_path / p).graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) == 7) for p in ops
    }
    assert plain.settings["bias_folded"] == with_bias["plain"] == 10
    assert fused.settings["bias_folded"] == with_bias["fused"] > 0
    graph = full_model(tmp_path / "plain").graph
    mm_out = {n.output[0] for n in graph.node if n.op_type == "MatMulIntegerToFloat"}
    vectors = {i.name for i in graph.initializer if len(i.dims) == 1}
    assert not [n for n in graph.node if n.op_type == "Add" and mm_out & set(n.input) and vectors & set(n.input)]  # no bias Add left


def test_predictor_runs_the_packed_artifact(lowered, encoders, texts):
    path, manifest = lowered("roberta-embedding", "ternary-w2a8")
    assert (path / packing.PACKED_FILE).exists() and manifest.settings["packed"]["tensors"]
    with Predictor(path) as pred:
        out = pred.predict(texts[:3])
    assert out.shape == (3, 32) and np.isfinite(out).all()


@pytest.mark.openvino
@pytest.mark.parametrize("name,scheme", [("bert-classifier", "bit-w1a1"), ("roberta-embedding", "ternary-w2a8")])
def test_compiles_for_runtimes_int8(lowered, tmp_path, name, scheme):
    pytest.importorskip("openvino")
    path, manifest = lowered(name, scheme)
    ov_manifest = compile_artifact(path, manifest, "openvino-cpu", tmp_path / "openvino-cpu", options={"tune": "off"})
    report = ov_manifest.settings["int8"]
    # OpenVINO's runtime model: every quantized matmul at u8/i8 (a fused int8 attention block counts as its 2 matmuls)
    assert ov_manifest.precision == "int8" and report["all_int8"] and report["int8"] >= 16
    assert set(report["precisions"]) & {"u8", "i8"}
    assert all("pooler" in f or "logits" in f or "classifier" in f for f in report["float"])
    assert ov_manifest.parity.passed and ov_manifest.parity.max_abs_diff < 1e-3
    # the IR's low-bit constants are packed too: the .bin keeps the rest, rebuilt in memory at load
    packed = ov_manifest.settings["packed"]
    assert packed["format"] == packing.IR_FORMAT and packed["tensors"]
    assert (tmp_path / "openvino-cpu" / "model.bin").stat().st_size == packed["bin_bytes"] - packed["unpacked_bytes"]
    assert packed["packed_bytes"] <= packed["unpacked_bytes"] // 4 + 4 * len(packed["tensors"])

    ort_manifest = compile_artifact(path, manifest, "ort-cpu", tmp_path / "ort-cpu", options={"tune": "off"})
    assert ort_manifest.settings["int8"]["all_int8"] and ort_manifest.settings["packed"]["tensors"]
    assert ort_manifest.parity.passed and ort_manifest.parity.max_abs_diff < 1e-4


def test_float_checkpoint_points_to_ptq(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="not a quantized") as info:
        lower(checkpoints["bert-classifier"], tmp_path / "x")
    assert "edgekit ptq" in info.value.hint
    assert not (tmp_path / "x").exists()


def test_scheme_that_cannot_run_int8_names_the_float_ops(checkpoints, encoders, tmp_path):
    # ternary weights with float activations: weight-only, which ONNX Runtime runs as float DQ + MatMul
    ckpt = quantized_checkpoint(checkpoints, encoders, tmp_path / "w2a32", "bert-classifier", make_config(None, weight_bits=2))
    with pytest.raises(ConfigError, match="fall back to float") as info:
        lower(ckpt, tmp_path / "x")
    assert "/query/MatMul" in str(info.value)
    ckpt = quantized_checkpoint(checkpoints, encoders, tmp_path / "w32a8", "bert-classifier", make_config(None, activation_bits=8))
    with pytest.raises(ConfigError, match="32-bit weights"):
        lower(ckpt, tmp_path / "y")


def test_packed_weights_that_do_not_match_the_manifest_are_refused(lowered, tmp_path):
    src, _ = lowered("bert-classifier", "bit-w1a1")
    path = Path(shutil.copytree(src, tmp_path / "copy"))
    doc = json.loads((path / artifact.MANIFEST).read_text())
    name = next(iter(doc["settings"]["packed"]["tensors"]))
    # a packer bug / swapped file: the packed bytes change and the file table is rewritten to match
    blob = bytearray((path / packing.PACKED_FILE).read_bytes())
    blob[doc["settings"]["packed"]["tensors"][name]["offset"]] ^= 0xFF
    (path / packing.PACKED_FILE).write_bytes(bytes(blob))
    doc["files"][packing.PACKED_FILE] = {"sha256": artifact.sha256_file(path / packing.PACKED_FILE), "bytes": len(blob)}
    (path / artifact.MANIFEST).write_text(json.dumps(doc))
    reseal(path)  # the attacker rewrote the manifest's own hash too: the packed tensor's hash still catches it
    with pytest.raises(ArtifactError, match="does not match the manifest; refusing to load"):
        Predictor(path).__enter__()
    with pytest.raises(ArtifactError, match="refusing to load"):
        compile_artifact(path, artifact.read_manifest(path), "ort-cpu", tmp_path / "ort", options={"tune": "off"})
    assert not (tmp_path / "ort").exists()


def test_packed_ir_that_does_not_match_the_manifest_is_refused(lowered, tmp_path):
    pytest.importorskip("openvino")
    src, manifest = lowered("bert-classifier", "bit-w1a1")
    compile_artifact(src, manifest, "openvino-cpu", tmp_path / "ov", options={"tune": "off"})
    with Predictor(tmp_path / "ov") as pred:  # loads from the packed weights
        assert pred.predict(["a short text"]).shape[0] == 1
    doc = json.loads((tmp_path / "ov" / artifact.MANIFEST).read_text())
    t = next(iter(doc["settings"]["packed"]["tensors"].values()))
    blob = bytearray((tmp_path / "ov" / packing.PACKED_FILE).read_bytes())
    blob[t["offset"]] ^= 0xFF
    (tmp_path / "ov" / packing.PACKED_FILE).write_bytes(bytes(blob))
    doc["files"][packing.PACKED_FILE] = {"sha256": artifact.sha256_file(tmp_path / "ov" / packing.PACKED_FILE), "bytes": len(blob)}
    (tmp_path / "ov" / artifact.MANIFEST).write_text(json.dumps(doc))
    reseal(tmp_path / "ov")
    with pytest.raises(ArtifactError, match="does not match the manifest; refusing to load"):
        Predictor(tmp_path / "ov").__enter__()


def test_no_pack_keeps_plain_int8_onnx(checkpoints, encoders, tmp_path):
    ckpt = quantized_checkpoint(checkpoints, encoders, tmp_path / "q", "distilbert-classifier", "ternary-w2a8")
    manifest = lower(ckpt, tmp_path / "low", pack=False)
    assert "packed" not in manifest.settings and not (tmp_path / "low" / packing.PACKED_FILE).exists()
    model = onnx.load(str(tmp_path / "low" / manifest.model_file))
    assert len(int8check.quantized_matmuls(model)) == 16

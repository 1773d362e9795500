"""Which matmuls ONNX Runtime and OpenVINO really run in INT8, on real QDQ graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from edgekit.deploy import int8check, parity
from edgekit.deploy.artifact import read_manifest

# per encoder layer: query, key, value, attention output, intermediate, output (6 weight
# matmuls) plus QK^T and PV (2 activation matmuls); the tiny models have 2 layers
LAYERS = 2
LINEAR_PER_LAYER = 6
ATTENTION_PER_LAYER = 2


@pytest.fixture(scope="module")
def graphs(exported, tmp_path_factory) -> dict[str, Path]:
    """The tiny BERT classifier's FP32 export, and its static QDQ INT8 quantization by onnxruntime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = exported("bert-classifier")
    fp32 = src / read_manifest(src).model_file
    feed, _ = parity.load_reference(src / parity.REFERENCE)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{k: v[i : i + 8] for k, v in feed.items()} for i in range(0, len(feed["input_ids"]), 8)])

        def get_next(self):
            return next(self._it, None)

    int8 = tmp_path_factory.mktemp("int8check") / "model.int8.onnx"
    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )
    return {"fp32": fp32, "int8": int8}


def _tiny_matmul(*, quantize_input: bool) -> bytes:
    """X[n, 8] @ DequantizeLinear(W int8)[8, 4]; with ``quantize_input`` X goes through Q/DQ too."""
    inits = [
        numpy_helper.from_array(np.random.default_rng(0).integers(-127, 127, (8, 4)).astype(np.int8), "W"),
        numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
    ]
    nodes = [oh.make_node("DequantizeLinear", ["W", "w_scale", "w_zero"], ["Wf"], name="dq_w")]
    x = "X"
    if quantize_input:
        nodes += [
            oh.make_node("QuantizeLinear", ["X", "x_scale", "x_zero"], ["Xq"], name="q_x"),
            oh.make_node("DequantizeLinear", ["Xq", "x_scale", "x_zero"], ["Xf"], name="dq_x"),
        ]
        x = "Xf"
    nodes.append(oh.make_node("MatMul", [x, "Wf"], ["Y"], name="mm"))
    graph = oh.make_graph(
        nodes,
        "tiny",
        [oh.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 8])],
        [oh.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ----------------------------------------------------------------------------- source graph


def test_quantized_matmuls_counts_dequantized_inputs_only(graphs):
    expected = LAYERS * (LINEAR_PER_LAYER + ATTENTION_PER_LAYER)
    names = int8check.quantized_matmuls(onnx.load(str(graphs["int8"])))
    assert len(names) == len(set(names)) == expected
    assert all("encoder/layer." in n for n in names)  # the pooler and the classifier head stay float
    assert int8check.quantized_matmuls(onnx.load(str(graphs["fp32"]))) == []


# ----------------------------------------------------------------------------- ONNX Runtime


def test_ort_runs_a_static_qdq_graph_in_int8(graphs):
    r = int8check.ort_report(graphs["int8"])
    assert r["expected_int8"] == LAYERS * (LINEAR_PER_LAYER + ATTENTION_PER_LAYER)
    assert r["integer_total"] == sum(r["integer_ops"].values()) >= r["expected_int8"]
    assert set(r["integer_ops"]) <= int8check.INTEGER_OPS
    assert r["float_fallback"] == [] and r["all_int8"] is True
    assert r["runtime"].startswith("onnxruntime ") and r["optimization"] == "all"


def test_ort_fp32_graph_runs_no_integer_kernel(graphs):
    r = int8check.ort_report(graphs["fp32"])
    assert r["integer_ops"] == {} and r["integer_total"] == 0 and r["expected_int8"] == 0
    # every encoder matmul is a float one (query/key/value/output/intermediate + attention)
    assert sum(r["float_matmuls"].values()) >= LAYERS * (LINEAR_PER_LAYER + ATTENTION_PER_LAYER)


def test_ort_without_qdq_fusion_reports_every_matmul_as_fallback(graphs):
    # the basic level does not fuse DequantizeLinear -> MatMul into integer kernels
    r = int8check.ort_report(graphs["int8"], level="basic")
    assert r["integer_total"] == 0 and r["all_int8"] is False
    assert len(r["float_fallback"]) == r["expected_int8"] > 0
    msg = int8check.fallback_message("onnxruntime", r)
    assert msg.startswith(f"onnxruntime runs 0 of {r['expected_int8']} quantized matmuls in INT8; these fall back to float: ")
    assert f"... ({r['expected_int8']} in all)" in msg


def test_ort_report_accepts_model_bytes(graphs):
    from_bytes = int8check.ort_report(graphs["int8"].read_bytes())
    from_path = int8check.ort_report(str(graphs["int8"]))
    assert from_bytes["integer_ops"] == from_path["integer_ops"] and from_bytes["all_int8"]


def test_ort_quantized_activation_and_weight_fuse_into_an_integer_kernel():
    r = int8check.ort_report(_tiny_matmul(quantize_input=True))
    assert r["expected_int8"] == 1 and r["integer_total"] == 1 and r["all_int8"]
    assert r["float_fallback"] == []


def test_ort_weight_only_dequantize_is_a_float_fallback():
    # ONNX Runtime folds a weight-only DequantizeLinear into the matmul, which still multiplies in float
    r = int8check.ort_report(_tiny_matmul(quantize_input=False))
    assert r["expected_int8"] == 1 and r["integer_total"] == 0
    assert r["float_fallback"] == ["mm"] and r["all_int8"] is False
    assert int8check.fallback_message("ort", r) == "ort runs 0 of 1 quantized matmuls in INT8; these fall back to float: mm"


# ----------------------------------------------------------------------------- OpenVINO


def _ov_compiled(path: Path):
    import openvino as ov

    core = ov.Core()
    # f32 hint: on CPUs with AMX/AVX512-BF16 the default would run float layers in bf16
    return core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})


def test_openvino_runs_the_qdq_linear_layers_in_int8(graphs):
    expected = len(int8check.quantized_matmuls(onnx.load(str(graphs["int8"]))))
    r = int8check.openvino_report(_ov_compiled(graphs["int8"]), expected)
    assert r["int8_matmul_nodes"] >= LAYERS * LINEAR_PER_LAYER
    assert r["int8"] == r["int8_matmul_nodes"] + 2 * r["int8_attention_blocks"]
    assert set(r["precisions"]) & {"u8", "i8"}
    # the encoder's linear layers are not among the float ones (only attention blocks, pooler, head may be)
    assert not [f for f in r["float"] if "dense/MatMul" in f or "query/MatMul" in f or "value/MatMul" in f]
    assert r["expected_int8"] == expected and r["all_int8"] == (r["int8"] >= expected)


def test_openvino_fp32_graph_runs_no_int8_matmul(graphs):
    r = int8check.openvino_report(_ov_compiled(graphs["fp32"]), expected=1)
    assert r["int8"] == 0 and r["int8_matmul_nodes"] == 0 and r["precisions"] == ["f32"]
    assert len(r["float"]) >= LAYERS * LINEAR_PER_LAYER and r["all_int8"] is False
    assert "all_int8" not in int8check.openvino_report(_ov_compiled(graphs["fp32"]))  # no expectation given

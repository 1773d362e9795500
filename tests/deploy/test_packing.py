"""edgekit.deploy.packing: 2-bit / 1-bit packing, the hand-written protobuf append, hash-checked unpack."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.deploy import packing
from edgekit.errors import ArtifactError


@pytest.mark.parametrize("bits,values", [(2, (-1, 0, 1)), (1, (-1, 1))])
@pytest.mark.parametrize("shape", [(7,), (33, 5), (4, 8, 3)])
def test_pack_roundtrip(bits, values, shape):
    rng = np.random.default_rng(0)
    codes = rng.choice(values, size=shape).astype(np.int8)
    data = packing.pack(codes, bits)
    assert len(data) == -(-codes.size * bits // 8)  # 4 ternary or 8 binary codes per byte
    np.testing.assert_array_equal(packing.unpack(data, bits, list(shape)), codes)
    assert packing.lowbit_width(codes) == bits


def test_lowbit_width_rejects_other_values():
    assert packing.lowbit_width(np.array([-1, 2], np.int8)) is None
    assert packing.lowbit_width(np.array([0.0, 1.0], np.float32)) is None


def _model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [helper.make_node("DequantizeLinear", [n, "s"], [f"{n}_f"]) for n in weights]
    inits = [numpy_helper.from_array(v, n) for n, v in weights.items()] + [numpy_helper.from_array(np.float32(0.5), "s")]
    outputs = [helper.make_tensor_value_info(f"{n}_f", TensorProto.FLOAT, list(v.shape)) for n, v in weights.items()]
    graph = helper.make_graph(nodes, "g", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pack_onnx_then_append_gives_the_same_model(tmp_path):
    rng = np.random.default_rng(1)
    weights = {
        "ternary": rng.choice([-1, 0, 1], size=(40, 30)).astype(np.int8),
        "binary": rng.choice([-1, 1], size=(64, 9)).astype(np.int8),
        "int8": rng.integers(-100, 100, size=(40, 30)).astype(np.int8),
    }
    model = _model(weights)
    onnx.save(model, str(tmp_path / "m.onnx"))
    packed = packing.pack_onnx(tmp_path / "m.onnx", tmp_path)
    assert set(packed["tensors"]) == {"ternary", "binary"}  # general int8 stays in the model
    assert packed["tensors"]["ternary"]["bits"] == 2 and packed["tensors"]["binary"]["bits"] == 1
    assert packed["packed_bytes"] == 40 * 30 // 4 + 64 * 9 // 8
    stripped = onnx.load(str(tmp_path / "m.onnx"))
    assert {t.name for t in stripped.graph.initializer} == {"int8", "s"}
    restored = onnx.load_from_string(packing.model_bytes(tmp_path, "m.onnx", packed))
    onnx.checker.check_model(restored)
    got = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    for name, value in weights.items():
        np.testing.assert_array_equal(got[name], value)
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    out = ort.InferenceSession(packing.model_bytes(tmp_path, "m.onnx", packed), providers=["CPUExecutionProvider"]).run(None, {})
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


def test_unpack_refuses_a_hash_mismatch_and_other_formats(tmp_path):
    codes = np.array([[1, -1, 0, 1]] * 64, np.int8)
    onnx.save(_model({"w": codes}), str(tmp_path / "m.onnx"))
    packed = packing.pack_onnx(tmp_path / "m.onnx", tmp_path)
    packed["tensors"]["w"]["sha256"] = "0" * 64
    with pytest.raises(ArtifactError, match="refusing to load"):
        packing.model_bytes(tmp_path, "m.onnx", packed)
    with pytest.raises(ArtifactError, match="format"):
        packing.unpack_all(tmp_path, {**packed, "format": "other"})


def _nested_model(outer: np.ndarray, inner: np.ndarray) -> onnx.ModelProto:
    """A model whose If branches hold their own low-bit weights (as the one-graph exit model's stages do)."""

    def branch(name: str, weight: np.ndarray, nested=None) -> onnx.GraphProto:
        nodes = [
            helper.make_node("DequantizeLinear", [name, "s"], [f"{name}_f"]),
            helper.make_node("ReduceSum", [f"{name}_f"], [f"{name}_r"]),
        ]
        out = f"{name}_r"
        if nested is not None:
            zero = helper.make_graph(
                [helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]))],
                "zero",
                [],
                [helper.make_tensor_value_info("zero", TensorProto.FLOAT, None)],
            )
            nodes.append(helper.make_node("If", ["c"], [f"{name}_if"], name=f"if_{name}", then_branch=nested, else_branch=zero))
            nodes.append(helper.make_node("Add", [out, f"{name}_if"], [f"{name}_sum"]))
            out = f"{name}_sum"
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, name)]
        )

    deep = branch("deep", inner)
    mid = branch("mid", inner.copy(), deep)
    top = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="top_if", then_branch=mid, else_branch=branch("plain", outer))],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(0.5), "s")],
    )
    model = helper.make_model(top, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_weights_inside_subgraphs_are_packed_and_put_back_where_they_were(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    model = _nested_model(rng.choice([-1, 1], size=(32, 16)).astype(np.int8), rng.choice([-1, 0, 1], size=(24, 20)).astype(np.int8))
    onnx.save(model, str(tmp_path / "m.onnx"))
    packed = packing.pack_onnx(tmp_path / "m.onnx", tmp_path)
    graphs = {name: t.get("graph", "") for name, t in packed["tensors"].items()}
    assert graphs == {"mid": "top_if/then_branch", "deep": "top_if/then_branch/if_mid/then_branch", "plain": "top_if/else_branch"}
    restored = packing.model_bytes(tmp_path, "m.onnx", packed)
    for c in (True, False):
        feed = {"c": np.array(c)}
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        np.testing.assert_array_equal(ort.InferenceSession(restored, providers=["CPUExecutionProvider"]).run(None, feed)[0], ref[0])
    lost = {**packed, "tensors": {**packed["tensors"], "deep": {**packed["tensors"]["deep"], "graph": "top_if/then_branch/nowhere/g"}}}
    with pytest.raises(ArtifactError, match="1 packed weights name a subgraph the model file does not have"):
        packing.model_bytes(tmp_path, "m.onnx", lost)

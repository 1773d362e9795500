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

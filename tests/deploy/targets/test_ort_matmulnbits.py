"""ort-cpu: a graph holding com.microsoft MatMulNBits is refused, at load, by an onnxruntime too old for it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from edgekit.deploy.targets import ort as ort_target
from edgekit.errors import TargetError

K, N, BLOCK = 32, 16, 16


def matmulnbits_graph(path, bits: int) -> np.ndarray:
    """Y = X @ W with W stored as ``bits``-bit codes by MatMulNBits (accuracy_level 4); returns W."""
    rng = np.random.default_rng(0)
    blocks, per_byte = K // BLOCK, 8 // bits
    codes = rng.integers(0, 2**bits, size=(N, blocks, BLOCK), dtype=np.uint8)
    packed = np.zeros((N, blocks, BLOCK // per_byte), np.uint8)
    for j in range(per_byte):  # low bits first along K
        packed |= codes[:, :, j::per_byte] << (bits * j)
    scales = rng.uniform(0.5, 1.5, size=(N, blocks)).astype(np.float32)
    zero = 2 ** (bits - 1)
    weight = ((codes.astype(np.float32) - zero) * scales[:, :, None]).reshape(N, K).T
    node = helper.make_node(
        "MatMulNBits", ["X", "B", "scales"], ["Y"], domain="com.microsoft", K=K, N=N, bits=bits, block_size=BLOCK, accuracy_level=4
    )
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, N])],
        [onnx.numpy_helper.from_array(packed, "B"), onnx.numpy_helper.from_array(scales.reshape(-1), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return weight


@pytest.mark.parametrize("bits", [2, 4])
def test_runs_on_the_installed_runtime(tmp_path, bits):
    weight = matmulnbits_graph(tmp_path / "m.onnx", bits)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    with ort_target.OrtSession(tmp_path / "m.onnx", threads=1) as session:
        y = session.infer({"X": x})["Y"]
    np.testing.assert_allclose(y, x @ weight, rtol=0.05, atol=0.1)  # accuracy_level 4 quantizes X to int8


@pytest.mark.parametrize(("bits", "old", "needed"), [(2, "1.22.1", "1.23.0"), (4, "1.16.3", "1.17.0")])
def test_refused_at_load_by_an_older_runtime(tmp_path, monkeypatch, bits, old, needed):
    matmulnbits_graph(tmp_path / "m.onnx", bits)
    monkeypatch.setattr(onnxruntime, "__version__", old)
    with pytest.raises(TargetError, match=rf"MatMulNBits bits={bits} .* needs onnxruntime >= {needed}; this is onnxruntime {old}") as err:
        ort_target.OrtSession(tmp_path / "m.onnx", threads=1)
    assert "\n" not in err.value.message and needed in err.value.hint


def test_version_needed_is_the_highest_of_the_graphs_nodes(tmp_path):
    matmulnbits_graph(tmp_path / "m2.onnx", 2)
    assert ort_target.matmulnbits_need(tmp_path / "m2.onnx")[0] == "1.23.0"
    ort_target.check_matmulnbits(tmp_path / "m2.onnx", "1.23.0")  # new enough: no error
    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["X"], ["Y"])],
            "plain",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    assert ort_target.matmulnbits_need(tmp_path / "plain.onnx") is None

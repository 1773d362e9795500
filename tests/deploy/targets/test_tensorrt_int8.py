"""jetson target on lowered INT8 graphs: TensorRT's Q/DQ are signed and symmetric, so edgekit's
UINT8 activations are rewritten as INT8 (exactly for binary {0, 1} activations, with one bit
less for non-negative 8-bit ones) and the rewritten graph is checked with ONNX Runtime here.
TensorRT itself is not here: the engine build is the plan's (build_engine.sh), not run."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import quantized_checkpoint
from onnx import TensorProto, helper, numpy_helper

from edgekit.build.compile import compile_artifact
from edgekit.build.lower import TOLERANCE, lower
from edgekit.deploy import artifact, parity
from edgekit.deploy.targets import tensorrt_int8
from edgekit.deploy.targets import tensorrt_plan as plan


def _lowered(checkpoints, encoders, root, name: str, scheme: str):
    ckpt = quantized_checkpoint(checkpoints, encoders, root / f"{scheme}-ckpt", name, scheme)
    lower(ckpt, root / scheme)
    return root / scheme


def _uint8_qdq(model) -> int:
    consts = {n.output[0]: n.attribute[0].t.data_type for n in model.graph.node if n.op_type == "Constant"}
    consts |= {t.name: t.data_type for t in model.graph.initializer}
    return sum(
        1 for n in model.graph.node if n.op_type in plan.QDQ_OPS and len(n.input) > 2 and consts.get(n.input[2]) == TensorProto.UINT8
    )


def _run(path, feed, output):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return parity.run_chunked(lambda f: sess.run([output], f)[0], feed, 8)


@pytest.mark.parametrize("scheme,exact", [("bit-w1a1", True), ("ternary-w2a8", False)])
def test_lowered_graph_becomes_signed_int8_for_tensorrt(checkpoints, encoders, tmp_path, scheme, exact):
    src = _lowered(checkpoints, encoders, tmp_path, "bert-classifier", scheme)
    m = compile_artifact(
        src, artifact.read_manifest(src), "jetson", tmp_path / "jetson", options={"precision": "int8", "tensorrt_major": 10}
    )
    signed = m.settings["signed_int8"]
    built = onnx.load(str(tmp_path / "jetson" / m.settings["plan"]["onnx"]))
    onnx.checker.check_model(built)
    assert _uint8_qdq(built) == 0  # no UINT8 Q/DQ left: TensorRT would reject them
    assert "--int8" in m.settings["plan"]["trtexec"]
    feed, reference = parity.load_reference(src / parity.REFERENCE)
    out = _run(tmp_path / "jetson" / m.settings["plan"]["onnx"], feed, "logits")
    if exact:  # binary {0, 1} activations: the same codes, the same function
        assert signed["exact"] > 0 and signed["requantized"] == 0
        assert parity.compare(reference, out, task="classifier", output="logits", runtime="ort", tolerance=TOLERANCE).passed
    else:  # 8-bit non-negative activations lose one bit; parity was checked and recorded
        assert signed["requantized"] > 0
        assert sum(n.op_type == "Relu" for n in built.graph.node) >= signed["requantized"]
        assert signed["parity_onnxruntime"]["passed"]
        assert np.abs(out - reference).max() == pytest.approx(signed["parity_onnxruntime"]["max_abs_diff"], rel=1e-4, abs=1e-6)


def _qdq_graph(zero_point: int, clip_max: float | None):
    """x -> [Clip(0, clip_max)] -> QuantizeLinear(u8, scale 0.1) -> DequantizeLinear -> y"""
    nodes, inits, src = [], [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(zero_point), "zp")], "x"
    if clip_max is not None:
        inits += [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(clip_max), "hi")]
        nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["c"]))
        src = "c"
    nodes += [helper.make_node("QuantizeLinear", [src, "s", "zp"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _eval(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_signed_qdq_exact_requantized_and_asymmetric():
    x = np.array([-1.0, 0.05, 0.1, 20.0], dtype=np.float32)
    binary = _qdq_graph(0, clip_max=0.1)  # codes 0 and 1 only: exact in INT8
    before = _eval(binary, x)
    assert tensorrt_int8.signed_qdq(binary) == {"exact": ["q"], "requantized": [], "asymmetric": []}
    np.testing.assert_array_equal(_eval(binary, x), before)

    wide = _qdq_graph(0, clip_max=None)  # codes 0..255: INT8 keeps 0..127 at twice the step
    before = _eval(wide, x)  # [0, 0 (round half to even), 0.1, 20.0]
    assert tensorrt_int8.signed_qdq(wide)["requantized"] == ["q"]
    after = _eval(wide, x)
    assert after[0] == 0.0  # the Relu keeps UINT8's clamp at zero
    assert after[3] == pytest.approx(20.0, abs=0.2) and np.max(np.abs(after - before)) <= 0.2 / 2 + 1e-6

    asym = _qdq_graph(128, clip_max=None)
    assert tensorrt_int8.signed_qdq(asym)["asymmetric"] == ["q"]

"""FakeQuantize placement for the CPU plugin (edgekit/deploy/targets/openvino_fq.py), in target openvino-cpu."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import packing
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.openvino import OpenVinoOptions, runtime_config
from edgekit.deploy.targets.openvino_fq import hoist_fake_quantize, unsign_fake_quantize

ov = pytest.importorskip("openvino")
ops = ov.opset13
pytestmark = pytest.mark.openvino

HIDDEN, HEADS = 32, 4


def _layer_type(op) -> str:
    info = op.get_rt_info()
    return info["layerType"].astype(str) if "layerType" in info else op.get_type_name()


def standalone_fq(compiled) -> list[str]:
    """The type of the node feeding each FakeQuantize that the CPU plugin runs as a node of its own."""
    return [
        _layer_type(op.input_value(0).get_node())
        for op in compiled.get_runtime_model().get_ordered_ops()
        if _layer_type(op) == "FakeQuantize"
    ]


def _fq(x, scale: float, rank: int, per_channel: int | None = None):
    shape = [1] * rank
    if per_channel:
        shape[-1] = per_channel
    lo, hi = (np.full(shape, v * scale, np.float32) for v in (-128, 127))
    return ops.fake_quantize(x, ops.constant(lo), ops.constant(hi), ops.constant(lo), ops.constant(hi), 256)


def head_split(per_channel: int | None = None, float_reader: bool = False):
    """x -> int8 matmul + bias -> Reshape to heads -> FakeQuantize -> Transpose: a lowered Q projection."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, HIDDEN], np.float32, name="x")
    xq = _fq(x, 0.05, 3)
    codes = ops.constant(rng.integers(-1, 2, (HIDDEN, HIDDEN)).astype(np.int8))
    w = ops.multiply(ops.convert(codes, np.float32), ops.constant(np.full((1, HIDDEN), 0.02, np.float32)))
    y = ops.add(ops.matmul(xq, w, False, False), ops.constant(rng.normal(size=HIDDEN).astype(np.float32)))
    heads = ops.reshape(y, ops.constant(np.array([0, 0, HEADS, HIDDEN // HEADS], np.int64)), special_zero=True)
    q = _fq(heads, 0.01, 4, per_channel)
    results = [ops.result(ops.transpose(q, ops.constant(np.array([0, 2, 1, 3], np.int64))))]
    if float_reader:  # the heads are read in float elsewhere too: the quantizer must stay after the Reshape
        results.append(ops.result(ops.relu(heads)))
    return ov.Model(results, [x])


def compile_cpu(model):
    return ov.Core().compile_model(model, "CPU", runtime_config(OpenVinoOptions()))


def test_hoisted_quantizer_fuses_into_the_matmul_and_computes_the_same():
    before = head_split()
    after = before.clone()
    assert hoist_fake_quantize(after) == 1
    types = [op.get_type_name() for op in after.get_ordered_ops()]
    assert types.index("FakeQuantize", types.index("Add")) < types.index("Reshape")  # Add -> FakeQuantize -> Reshape
    assert standalone_fq(compile_cpu(before)).count("Reshape") == 1
    assert "Reshape" not in standalone_fq(compile_cpu(after))  # folded into FullyConnected
    x = np.random.default_rng(1).normal(size=(2, 7, HIDDEN)).astype(np.float32)
    b, a = compile_cpu(before)([x])[0], compile_cpu(after)([x])[0]
    assert b.shape == a.shape == (2, HEADS, 7, HIDDEN // HEADS)
    np.testing.assert_allclose(a, b, atol=0.0101)  # the same codes; at most one step (0.01) where float order rounds apart


@pytest.mark.parametrize("case", ["per_channel", "float_reader"])
def test_quantizers_that_do_not_commute_stay(case):
    model = head_split(per_channel=HIDDEN // HEADS) if case == "per_channel" else head_split(float_reader=True)
    assert hoist_fake_quantize(model) == 0


def test_lowered_model_runs_no_quantizer_behind_a_reshape(lowered_model, tmp_path):
    """A lowered ternary encoder on openvino-cpu: the Q/K/V and attention-output quantizers, which the lowering
    places after the head Reshape/Transpose for ONNX Runtime, are folded into FullyConnected and the
    attention Subgraph; parity and INT8 execution hold."""
    src, manifest = lowered_model("ternary-w2a8")
    out = compile_artifact(src, manifest, "openvino-cpu", tmp_path / "ov", options={"tune": "off"})
    assert out.parity.passed and out.settings["int8"]["all_int8"]
    with Predictor(tmp_path / "ov") as pred:
        after = standalone_fq(pred.session.compiled)
    assert after and not {"Reshape", "Transpose"} & set(after)  # only LayerNorm outputs (read by the residual too)
    assert out.settings.get("fake_quantize_hoisted", 0) >= 4 * manifest.settings["lowered"]["modules"]["attention"]
    # without the move, the same graph runs them standalone behind its Reshapes
    with packing.unpacked_dir(src, manifest) as plain:
        before = standalone_fq(compile_cpu(ov.convert_model(str(plain / manifest.model_file))))
    assert before.count("Reshape") >= 4 * manifest.settings["lowered"]["modules"]["attention"]
    assert len(after) == len(before) - before.count("Reshape") - before.count("Transpose")


def _runtime_precisions(compiled) -> list[str]:
    """The activation precision each int8 FullyConnected of a runtime model reads (its runtimePrecision)."""
    return [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if _layer_type(op).startswith("FullyConnected") and op.get_rt_info()["runtimePrecision"].astype(str) in ("i8", "u8")
    ]


def shared_input(readers: str = "matmuls"):
    """A symmetric activation quantizer read by two int8-weight matmuls (Q and K), one through a Reshape;
    ``readers="float"``: also read by a float Relu."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, HIDDEN], np.float32, name="x")
    xq = _fq(x, 0.05, 3)
    outs = []
    for i in range(2):
        codes = ops.constant(rng.integers(-1, 2, (HIDDEN, HIDDEN)).astype(np.int8))
        w = ops.multiply(ops.convert(codes, np.float32), ops.constant(np.full((1, HIDDEN), 0.02 * (i + 1), np.float32)))
        src = xq if i == 0 else ops.reshape(xq, ops.constant(np.array([0, -1, HIDDEN], np.int64)), special_zero=True)
        outs.append(ops.result(ops.add(ops.matmul(src, w, False, False), ops.constant(rng.normal(size=HIDDEN).astype(np.float32)))))
    if readers == "float":
        outs.append(ops.result(ops.relu(xq)))
    return ov.Model(outs, [x])


def test_unsigned_activations_run_u8_and_compute_the_same():
    before = shared_input()
    after = before.clone()
    assert unsign_fake_quantize(after) == 1
    assert set(_runtime_precisions(compile_cpu(before))) == {"i8"}
    assert set(_runtime_precisions(compile_cpu(after))) == {"u8"}
    x = np.random.default_rng(1).normal(scale=2.0, size=(2, 7, HIDDEN)).astype(np.float32)
    b, a = compile_cpu(before)([x]), compile_cpu(after)([x])
    for i in range(2):
        assert np.abs(b[i]).max() > 0.1  # the matmuls see real signal, not clamped zeros
        np.testing.assert_allclose(a[i], b[i], rtol=0, atol=1e-4)  # the same integer products, rescaled in another order


def test_a_quantizer_read_in_float_stays_signed():
    model = shared_input(readers="float")
    assert unsign_fake_quantize(model) == 0


def test_lowered_model_runs_its_matmuls_on_u8(lowered_model, tmp_path):
    """A lowered ternary encoder: every int8 matmul reads u8 activations, parity holds; unsigned=off keeps i8."""
    src, manifest = lowered_model("ternary-w2a8")
    on = compile_artifact(src, manifest, "openvino-cpu", tmp_path / "on", options={"tune": "off"})
    off = compile_artifact(src, manifest, "openvino-cpu", tmp_path / "off", options={"tune": "off", "unsigned": "off"})
    assert on.parity.passed and on.settings["int8"]["all_int8"] and off.parity.passed
    # per layer: the Q/K/V input, the attention output, the FFN input (the GELU output is unsigned already)
    assert on.settings["fake_quantize_unsigned"] >= 3 * manifest.settings["lowered"]["modules"]["attention"]
    assert "fake_quantize_unsigned" not in off.settings
    with Predictor(tmp_path / "on") as pon, Predictor(tmp_path / "off") as poff:
        assert set(_runtime_precisions(pon.session.compiled)) == {"u8"}
        assert "i8" in _runtime_precisions(poff.session.compiled)


def test_binary_activations_stay_signed(lowered_model, tmp_path):
    """A lowered W1A1 encoder: its sign binarizers' quantizers are not moved (the shift's rounding would flip
    signs downstream), so the default build computes what unsigned=off computes, to the bit."""
    src, manifest = lowered_model("bit-w1a1")
    on = compile_artifact(src, manifest, "openvino-cpu", tmp_path / "on", options={"tune": "off"})
    compile_artifact(src, manifest, "openvino-cpu", tmp_path / "off", options={"tune": "off", "unsigned": "off"})
    assert on.parity.passed and on.settings["int8"]["all_int8"]
    assert "fake_quantize_unsigned" not in on.settings
    texts = ["a short text", "another one, somewhat longer than the first", "x"]
    with Predictor(tmp_path / "on") as pon, Predictor(tmp_path / "off") as poff:
        assert "i8" in _runtime_precisions(pon.session.compiled)
        np.testing.assert_array_equal(pon.predict(texts), poff.predict(texts))

"""edgekit.deploy.kernels.rewrite: a lowered W1A1 graph with its binary matmuls as BinaryMatMul.

Against the lowered INT8 graph: the integer dot products of every rewritten matmul bit for bit (the
kernel fed the very activations ONNX Runtime saw, scale 1 and bias 0, against ONNX Runtime's own
QuantizeLinear codes times the int8 weight codes); the float matmul outputs within float32 rounding
of the scale (rtol 1e-6, atol 1e-6); the final outputs within 1e-6 of OpenVINO running the lowered
graph itself (observed identical), and within edgekit.build.lower.TOLERANCE of ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import binary_matmul_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.deploy import packing
from edgekit.deploy.kernels import rewrite, xnor

pytestmark = pytest.mark.openvino
ort = pytest.importorskip("onnxruntime")


def _ort(model: onnx.ModelProto, extra: list[str] = ()) -> ort.InferenceSession:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in extra:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))  # untyped: ONNX Runtime infers it
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _pattern(k: int, n: int, mode: str, codes: np.ndarray, beta: float, alpha: float, bias: bool = True) -> onnx.ModelProto:
    """One linear as ``edgekit lower`` writes it (edgekit.build.qdq), input [B, S, K]."""
    rng = np.random.default_rng(k + n)
    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v), name))  # noqa: E731
    if mode == "pm1":
        nodes = [
            c("beta", np.float32(beta)),
            c("two_a", np.float32(2 * alpha)),
            c("a", np.float32(alpha)),
            c("z", np.int8(0)),
            helper.make_node("GreaterOrEqual", ["X", "beta"], ["ge"]),
            helper.make_node("Cast", ["ge"], ["gef"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["gef", "two_a"], ["m2"]),
            helper.make_node("Sub", ["m2", "a"], ["pm"]),
            helper.make_node("QuantizeLinear", ["pm", "a", "z"], ["Xq"]),
        ]
    else:
        nodes = [
            c("beta", np.float32(beta)),
            c("a", np.float32(alpha)),
            c("zero", np.float32(0)),
            c("z", np.uint8(0)),
            helper.make_node("Sub", ["X", "beta"], ["d"]),
            helper.make_node("Clip", ["d", "zero", "a"], ["cl"]),
            helper.make_node("QuantizeLinear", ["cl", "a", "z"], ["Xq"]),
        ]
    nodes += [
        helper.make_node("DequantizeLinear", ["Xq", "a", "z"], ["Xdq"]),
        c("Wz", np.zeros(n, np.int8)),
        helper.make_node("DequantizeLinear", ["W", "Ws", "Wz"], ["Wf"], axis=1),
        helper.make_node("MatMul", ["Xdq", "Wf"], ["mm" if bias else "Y"], name="linear/MatMul"),
    ]
    inits = [numpy_helper.from_array(codes, "W"), numpy_helper.from_array((rng.random(n) * 0.01 + 0.001).astype(np.float32), "Ws")]
    if bias:
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["Y"]))
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "S", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "S", n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode,beta,alpha", [("pm1", 0.125, 0.3), ("01", -0.25, 0.75)])
@pytest.mark.parametrize("bias", [True, False])
def test_one_lowered_linear_becomes_one_op_with_the_same_integers(ov_compile, mode, beta, alpha, bias):
    k, n = 100, 40
    rng = np.random.default_rng(1)
    codes = rng.choice(np.array([-1, 1], np.int8), size=(k, n))
    model = _pattern(k, n, mode, codes, beta, alpha, bias)
    new, report = rewrite.rewrite(model)
    assert [(r["mode"], r["k"], r["n"]) for r in report["rewritten"]] == [(mode, k, n)] and report["kept"] == []
    assert [nd.op_type for nd in new.graph.node] == [xnor.OP_TYPE]  # binarizer, QDQ, MatMul and bias Add all folded in
    x = rng.standard_normal((2, 7, k)).astype(np.float32)
    x[0, 0, :30] = np.float32(beta)  # at the threshold
    x[0, 1, :30] = np.float32(beta) + np.float32(alpha) / 2  # a QuantizeLinear tie ({0,1}: half to even -> 0)
    want, q = _ort(model, ["Xq"]).run(["Y", "Xq"], {"X": x})
    got = ov_compile(new)(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    ints = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    scale_name = next(nm for nm in ints if nm.endswith("xnor_scale"))
    bias_name = next(nm for nm in ints if nm.endswith("xnor_bias"))
    for t in new.graph.initializer:  # scale 1, bias 0: the outputs are the integer dot products
        if t.name in (scale_name, bias_name):
            t.CopyFrom(numpy_helper.from_array(np.full_like(ints[t.name], 1.0 if t.name == scale_name else 0.0), t.name))
    dots = ov_compile(new, "ints.onnx")(x)[0]
    assert np.array_equal(dots, (q.astype(np.int64) @ codes.astype(np.int64)).astype(np.float32))


def test_matmuls_that_are_not_binary_stay_with_a_reason():
    rng = np.random.default_rng(2)
    ternary = _pattern(64, 16, "pm1", rng.choice(np.array([-1, 0, 1], np.int8), size=(64, 16)), 0.0, 0.5)
    new, report = rewrite.rewrite(ternary)
    assert report["rewritten"] == [] and "not binary" in report["kept"][0]["reason"]
    assert new.graph == ternary.graph
    eight_bit = _pattern(64, 16, "pm1", rng.choice(np.array([-1, 1], np.int8), size=(64, 16)), 0.0, 0.5)
    q = next(nd for nd in eight_bit.graph.node if nd.op_type == "QuantizeLinear")
    q.input[0] = "X"  # plain 8-bit activations: QuantizeLinear(x) with no binarizer
    _, report = rewrite.rewrite(eight_bit)
    assert report["rewritten"] == [] and "not binary" in report["kept"][0]["reason"]


# ----------------------------------------------------------------------------- a lowered tiny encoder


@pytest.fixture(scope="module", params=["bit-w1a1", "bibert-w1a1"])
def lowered_w1a1(request, checkpoints, encoders, tmp_path_factory):
    from conftest import quantized_checkpoint

    from edgekit.build.lower import lower

    root = tmp_path_factory.mktemp(f"xnor-{request.param}")
    ckpt = quantized_checkpoint(checkpoints, encoders, root / "ckpt", "bert-classifier", request.param)
    manifest = lower(ckpt, root / "lowered")
    model = onnx.load_from_string(packing.model_bytes(root / "lowered", manifest.model_file, manifest.settings.get("packed")))
    return request.param, root / "lowered", manifest, model


def test_lowered_encoder_rewritten_matches_the_int8_graph(lowered_w1a1, ov_compile, ov_core, tmp_path):
    scheme, path, manifest, model = lowered_w1a1
    new, report = rewrite.rewrite(model, bits=False, attention=False)  # each matmul on its own: probed one by one below
    assert report["fused"] == []
    linears = manifest.settings["lowered"]["modules"]["linear"]
    assert len(report["rewritten"]) == linears  # every lowered linear (the classifier head stays float: not lowered)
    assert {r["reason"] for r in report["kept"]} <= {"activation x activation matmul (no constant weights)", "not a QDQ matmul"}
    if scheme == "bit-w1a1":
        assert {r["mode"] for r in report["rewritten"]} == {"pm1", "01"}  # BiT: {0,1} after GELU, {-1,+1} elsewhere
    assert sum(nd.op_type == xnor.OP_TYPE for nd in new.graph.node) == len(report["rewritten"])

    # every rewritten matmul: the same integers as the INT8 graph, on the activations ONNX Runtime saw
    g = rewrite._Graph(model.graph)
    mms = {nd.name: nd for nd in model.graph.node if nd.op_type == "MatMul"}
    ops = {nd.name: nd for nd in new.graph.node if nd.op_type == xnor.OP_TYPE}
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    feed = parity_feed(path, model)
    probes = []
    for r in report["rewritten"]:
        mm, op = mms[r["name"]], ops[r["name"] + "/BinaryMatMul"]
        q = g.op(g.op(mm.input[0], "DequantizeLinear").input[0], "QuantizeLinear")
        probes.append((mm, op, q.output[0], g.const(g.op(mm.input[1], "DequantizeLinear").input[0])))
    names = sorted({n for mm, op, q, _ in probes for n in (op.input[0], q, mm.output[0], op.output[0])})
    seen = dict(zip(names, _ort(model, names).run(names, feed)))
    for mm, op, q, codes in probes:
        w, scale, bias, params = (inits[i] for i in op.input[1:])
        attrs = {a.name: helper.get_attribute_value(a) for a in op.attribute}
        mode, n, k = attrs["mode"].decode(), attrs["n"], attrs["k"]
        x = seen[op.input[0]].reshape(-1, k)
        one = binary_matmul_graph(w, np.ones(n, np.float32), np.zeros(n, np.float32), params, mode, n, k)
        dots = ov_compile(one, "probe.onnx")(x)[0]
        assert np.array_equal(dots, (seen[q].reshape(-1, k).astype(np.int64) @ codes.astype(np.int64)).astype(np.float32)), mm.name
        out = ov_compile(binary_matmul_graph(w, scale, bias, params, mode, n, k), "probe.onnx")(x)[0]
        np.testing.assert_allclose(out, seen[op.output[0]].reshape(-1, n), rtol=1e-6, atol=1e-6, err_msg=mm.name)

    # the whole model: rewritten on OpenVINO vs lowered on ONNX Runtime, and through OpenVINO IR
    want = _ort(model).run(None, feed)[0]
    got = ov_compile(new, "rewritten.onnx")(feed)[0]
    ov_lowered = ov_compile(model, "lowered.onnx")(feed)[0]
    # the same graph on OpenVINO with and without the kernel: observed bit-identical on these models
    np.testing.assert_allclose(got, ov_lowered, rtol=0, atol=1e-6)
    # against ONNX Runtime, no farther than OpenVINO's own run of the lowered graph (observed 1.2e-4 on
    # logits of ~0.014 here: OpenVINO and ONNX Runtime differ outside the binary matmuls)
    assert np.abs(got - want).max() <= np.abs(ov_lowered - want).max() + 1e-6
    from edgekit.build.lower import TOLERANCE
    from edgekit.deploy import parity

    assert parity.compare(want, got, task=manifest.task, output="logits", runtime="openvino + BinaryMatMul", tolerance=TOLERANCE).passed
    import openvino as ov

    xml = tmp_path / "rewritten.xml"
    ov.save_model(ov_core.read_model(str(tmp_path / "rewritten.onnx")), str(xml))
    fresh = ov.Core()
    with pytest.raises(RuntimeError, match="BinaryMatMul"):
        fresh.read_model(str(xml))  # without the kernel the IR does not load
    ir = ov_core.compile_model(ov_core.read_model(str(xml)), "CPU", {"INFERENCE_NUM_THREADS": "2", "INFERENCE_PRECISION_HINT": "f32"})
    assert np.array_equal(ir(feed)[0], got)


def test_ffn_matmuls_joined_by_bits_compute_the_same(lowered_w1a1, ov_compile):
    """Each FFN's intermediate matmul hands its output matmul the bits of GELU + binarizer directly: the GELU and
    the float tensor are gone, and the model computes what the unjoined rewrite computes, to the bit."""
    scheme, path, manifest, model = lowered_w1a1
    apart, _ = rewrite.rewrite(model, bits=False)
    joined, report = rewrite.rewrite(model)
    layers = manifest.settings["lowered"]["modules"]["attention"]
    assert len(report["fused"]) == layers and all(f["gelu"] for f in report["fused"]), report["not_fused"]
    assert all("intermediate" in f["from"] and "output" in f["to"] for f in report["fused"])
    assert sum(nd.op_type == "Erf" for nd in joined.graph.node) == sum(nd.op_type == "Erf" for nd in apart.graph.node) - layers
    feed = parity_feed(path, model)
    np.testing.assert_array_equal(ov_compile(joined, "joined.onnx")(feed)[0], ov_compile(apart, "apart.onnx")(feed)[0])


@pytest.mark.parametrize("gelu", [True, False])
@pytest.mark.parametrize(
    "mode,params", [("01", (0.05, 0.7, 0.7)), ("01", (-0.1, 0.5, 0.6)), ("pm1", (0.1, 0.0, 1.0)), ("pm1", (-0.05, 0.0, 1.0))]
)
def test_bit_thresholds_give_the_binarizers_bits_for_every_dot(gelu, mode, params):
    """Against the unfused computation evaluated at every dot product: float32 epilogue, exact GELU rounded to
    float32, the binarizer in float32. Negative, zero and positive scales; (-0.05, pm1) after a GELU has ones
    on both sides (GELU dips to -0.17 below zero), a low run and a high run per column."""
    import math

    rng = np.random.default_rng(len(mode) + int(gelu))
    k, n = 90, 40
    scale = (rng.standard_normal(n) * 0.03).astype(np.float32)
    scale[:2] = 0.0
    bias = rng.standard_normal(n).astype(np.float32)
    params = np.array(params, np.float32)
    ge, le = rewrite.bit_thresholds(scale, bias, k, gelu, mode, params)
    d = np.arange(-k, k + 1)
    y = d.astype(np.float32)[:, None] * scale + bias
    exact = np.vectorize(lambda v: np.float32(0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2)))), otypes=[np.float32])
    g = exact(y) if gelu else y
    beta, hi, qscale = params
    want = g >= beta if mode == "pm1" else np.minimum(np.maximum(g - beta, np.float32(0)), hi) / qscale > np.float32(0.5)
    assert np.array_equal((d[:, None] >= ge) | (d[:, None] <= le), want)
    assert 0 < want.mean() < 1
    if gelu and mode == "pm1" and params[0] < 0:
        assert ((le > -k - 1) & (ge < k + 1)).any()  # both runs occur


def parity_feed(path, model) -> dict[str, np.ndarray]:
    """The 32 real texts the lowering checked parity on (``parity_reference.npz``)."""
    from edgekit.deploy import parity

    ref = np.load(path / parity.REFERENCE)
    names = {i.name for i in model.graph.input}
    return {k.split(".", 1)[1]: ref[k] for k in ref.files if k.startswith("input.") and k.split(".", 1)[1] in names}


def test_keep_gelu_leaves_the_matmul_before_a_gelu():
    rng = np.random.default_rng(4)
    model = _pattern(64, 16, "pm1", rng.choice(np.array([-1, 1], np.int8), size=(64, 16)), 0.0, 0.5)
    model.graph.initializer.append(numpy_helper.from_array(np.float32(np.sqrt(2)), "sqrt2"))
    model.graph.node.extend([helper.make_node("Div", ["Y", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["Z"])])
    model.graph.output[0].name = "Z"
    _, report = rewrite.rewrite(model, keep_gelu=True)
    assert report["rewritten"] == [] and "GELU" in report["kept"][0]["reason"]
    _, report = rewrite.rewrite(model)
    assert len(report["rewritten"]) == 1


def test_binary_attention_runs_each_layer_as_one_op(lowered_w1a1, ov_compile):
    """BiT's attention (binary Q, K, V and {0,1} probabilities) becomes one BinaryAttention per layer between the
    Q/K/V matmuls' bits and the output projection's; the model computes what the rewrite without it computes."""
    scheme, path, manifest, model = lowered_w1a1
    apart, _ = rewrite.rewrite(model, attention=False)
    fused, report = rewrite.rewrite(model)
    layers = manifest.settings["lowered"]["modules"]["attention"]
    feed = parity_feed(path, model)
    if scheme == "bibert-w1a1":  # BiBERT's Bi-Attention has no softmax to binarize after: left as it is
        softmaxes = sum(nd.op_type == "Softmax" for nd in model.graph.node)
        assert report["attention"] == [] and len(report["attention_apart"]) == softmaxes
        assert all(r["reason"] for r in report["attention_apart"])
        np.testing.assert_array_equal(ov_compile(fused, "fused.onnx")(feed)[0], ov_compile(apart, "apart.onnx")(feed)[0])
        return
    assert len(report["attention"]) == layers and report["attention_apart"] == [], report["attention_apart"]
    ops = [nd for nd in fused.graph.node if nd.op_type == xnor.ATTENTION_OP]
    assert len(ops) == layers and not any(nd.op_type in ("Softmax", "Transpose") for nd in fused.graph.node)
    by_out = {nd.output[0]: nd for nd in fused.graph.node}
    attr = lambda nd, name: helper.get_attribute_value(next(a for a in nd.attribute if a.name == name))  # noqa: E731
    for op in ops:  # one matmul emits the bits of Q, K and V (they read one input alike); the output projection reads its bits
        qkv = by_out[op.input[0]]
        assert list(op.input[:3]) == [qkv.output[0]] * 3 and attr(op, "qkv") == 1 and attr(qkv, "y_bits") == 1
        assert attr(qkv, "n") == 3 * 64 * -(-attr(op, "heads") * attr(op, "head_dim") // 64)  # Q, K, V each from a word boundary
    assert all(f["qkv"] for f in report["attention"])
    assert sum(nd.op_type == xnor.OP_TYPE for nd in fused.graph.node) == len(report["rewritten"]) - 2 * layers
    got, want = ov_compile(fused, "fused.onnx")(feed)[0], ov_compile(apart, "apart.onnx")(feed)[0]
    # softmax's exp and sum are not OpenVINO's to the last bit: a probability at its binarizer's threshold may
    # flip (see test_xnor_attention); on these 32 texts the logits come out equal or within the lowering's tolerance
    from edgekit.build.lower import TOLERANCE
    from edgekit.deploy import parity

    assert parity.compare(want, got, task=manifest.task, output="logits", runtime="BinaryAttention", tolerance=TOLERANCE).passed
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_attention_with_a_mask_that_is_not_float32_is_left_apart(lowered_w1a1):
    """The kernel adds a float32 mask: a graph whose mask is cast to another type keeps its attention, with the reason."""
    scheme, _, _, model = lowered_w1a1
    if scheme != "bit-w1a1":
        pytest.skip("BiBERT's attention is never fused")
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    g = rewrite._Graph(changed.graph)
    casts = {
        g.producer[add.input[1]].name
        for add in changed.graph.node
        if add.op_type == "Add"
        and add.input[1] in g.producer
        and g.producer[add.input[1]].op_type == "Cast"
        and any(u.op_type == "Softmax" for u in g.consumers.get(add.output[0], []))
    }
    assert casts  # the exporter's mask reaches each attention through a Cast
    for node in changed.graph.node:
        if node.name in casts:
            next(a for a in node.attribute if a.name == "to").i = onnx.TensorProto.FLOAT16
    _, report = rewrite.rewrite(changed)
    assert report["attention"] == [] and {r["reason"] for r in report["attention_apart"]} == {"the mask added to the scores is not float32"}

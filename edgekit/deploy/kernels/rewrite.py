"""Rewrite a lowered W1A1 ONNX graph so each binary x binary matmul runs as one ``BinaryMatMul`` node.

``edgekit lower`` writes a binary linear (BiT/BiBERT weights, binary activations) as::

    x -> GreaterOrEqual(x, beta) -> Cast -> Mul(2a) -> Sub(a) -> QuantizeLinear(a, int8)    ({-1,+1} activations)
    x -> Sub(x, beta) -> Clip(0, a) -> QuantizeLinear(a, uint8)                            ({0,1} activations)
      -> DequantizeLinear(a) -> MatMul(., DequantizeLinear(int8 codes [K,N] in {-1,+1}, w_scale[N], axis=1)) [-> Add(bias)]

:func:`rewrite` finds that pattern, checks from the graph's own constants that the binarizer yields
exactly the codes the kernel computes (the float32 QuantizeLinear of both branch values is -1/+1, or
0/1 below and above ``0.5 * qscale``), and replaces it with
``BinaryMatMul(x, packed W, a * w_scale, bias, [beta, hi, qscale])`` (domain ``edgekit.xnor``; see
``xnor_matmul.cpp``). The integer dot products are those of the INT8 graph exactly; the float epilogue
is ``dot * (a * w_scale[n]) + bias[n]``, the order ONNX Runtime's MatMulIntegerToFloat uses. Matmuls
that do not match (attention's activation x activation matmuls, ternary weights, 8-bit activations)
are left as they are, each with the reason in the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.deploy.kernels import xnor
from edgekit.deps import require


class _Graph:
    """Producers, consumers and constant values of an ONNX graph."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self._np = numpy_helper
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def op(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def split_const(self, node) -> tuple[str, np.ndarray] | None:
        """(variable input, constant input) of a binary op with one constant operand."""
        a, b = node.input[0], node.input[1]
        cb, ca = self.const(b), self.const(a)
        if cb is not None and ca is None:
            return a, cb
        if ca is not None and cb is None and node.op_type in ("Mul", "Add"):
            return b, ca
        return None


class _Skip(Exception):
    pass


def _scalar(value: np.ndarray | None, what: str) -> float:
    if value is None or value.size != 1:
        raise _Skip(f"{what} is not a constant scalar")
    return float(np.asarray(value, np.float32).reshape(()))


def _quantize(v: np.float32, scale: np.float32, lo: int, hi: int) -> int:
    """ONNX QuantizeLinear of one float32 value (division, round half to even, saturate)."""
    return int(np.clip(np.round(np.float32(v) / np.float32(scale)), lo, hi))


def _binarizer(g: _Graph, q) -> tuple[str, str, np.ndarray]:
    """(x, mode, [beta, hi, qscale]) of the binarizer feeding QuantizeLinear ``q``."""
    qscale = np.float32(_scalar(g.const(q.input[1]), "activation QuantizeLinear scale"))
    zp = g.const(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
    if zp is None or zp.size != 1 or int(zp.reshape(())) != 0:
        raise _Skip("activation zero point is not 0")
    signed = zp.dtype == np.int8
    lo, hi = (-128, 127) if signed else (0, 255)
    sub = g.op(q.input[0], "Sub")
    clip = g.op(q.input[0], "Clip")
    if signed and sub is not None:  # {-1,+1}: Sub(Mul(Cast(GreaterOrEqual(x, beta)), c2), c1)
        split = g.split_const(sub)
        mul = g.op(split[0], "Mul") if split else None
        msplit = g.split_const(mul) if mul is not None else None
        cast = g.op(msplit[0], "Cast") if msplit else None
        ge = g.op(cast.input[0], "GreaterOrEqual") if cast is not None else None
        gsplit = g.split_const(ge) if ge is not None else None
        if not gsplit or gsplit[0] != ge.input[0]:
            raise _Skip("signed activations not produced by GreaterOrEqual/Cast/Mul/Sub (not a binary activation)")
        c1, c2 = np.float32(_scalar(split[1], "Sub constant")), np.float32(_scalar(msplit[1], "Mul constant"))
        codes = [_quantize(np.float32(np.float32(g_ * c2) - c1), qscale, lo, hi) for g_ in (np.float32(0), np.float32(1))]
        if codes != [-1, 1]:
            raise _Skip(f"binarizer codes are {codes}, not [-1, +1]")
        return ge.input[0], "pm1", np.array([_scalar(gsplit[1], "threshold"), 0.0, qscale], np.float32)
    if not signed and clip is not None:  # {0,1}: Clip(Sub(x, beta), 0, hi)
        lo_c = g.const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
        hi_c = g.const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        sub = g.op(clip.input[0], "Sub")
        split = g.split_const(sub) if sub is not None else None
        if lo_c is None or hi_c is None or not split or split[0] != sub.input[0]:
            raise _Skip("unsigned activations not produced by Clip(Sub(x, beta), 0, hi)")
        clip_lo, clip_hi = _scalar(lo_c, "Clip min"), np.float32(_scalar(hi_c, "Clip max"))
        if clip_lo != 0.0 or _quantize(clip_hi, qscale, lo, hi) != 1:
            raise _Skip("Clip range does not give codes {0, 1}")
        return sub.input[0], "01", np.array([_scalar(split[1], "threshold"), clip_hi, qscale], np.float32)
    raise _Skip("activations are not binary (no binarizer before QuantizeLinear)")


def _feeds_gelu(g: _Graph, name: str) -> bool:
    """True if ``name`` is the input of an erf GELU (``x * 0.5 * (1 + erf(x / sqrt 2))``, as exported)."""
    for user in g.consumers.get(name, []):
        if user.op_type == "Gelu" or (user.op_type == "Div" and any(u.op_type == "Erf" for u in g.consumers.get(user.output[0], []))):
            return True
    return False


def _match(g: _Graph, mm, keep_gelu: bool = False) -> dict[str, Any]:
    a_dq, b_dq = g.op(mm.input[0], "DequantizeLinear"), g.op(mm.input[1], "DequantizeLinear")
    if a_dq is None or b_dq is None:
        raise _Skip("not a QDQ matmul")
    codes = g.const(b_dq.input[0])
    if codes is None:
        raise _Skip("activation x activation matmul (no constant weights)")
    if codes.dtype != np.int8 or codes.ndim != 2 or not np.isin(codes, (-1, 1)).all():
        raise _Skip("weights are not binary int8 codes [K, N] in {-1, +1}")
    axis = next((a.i for a in b_dq.attribute if a.name == "axis"), 1)
    w_scale = g.const(b_dq.input[1])
    w_zp = g.const(b_dq.input[2]) if len(b_dq.input) > 2 and b_dq.input[2] else np.zeros(1, np.int8)
    k, n = codes.shape
    if w_scale is None or w_zp is None or np.any(w_zp != 0) or (w_scale.size != 1 and (axis not in (1, -1) or w_scale.size != n)):
        raise _Skip("weight DequantizeLinear is not per-output-channel with zero point 0")
    a_scale = np.float32(_scalar(g.const(a_dq.input[1]), "activation DequantizeLinear scale"))
    a_zp = g.const(a_dq.input[2]) if len(a_dq.input) > 2 and a_dq.input[2] else np.zeros(1)
    if a_zp is None or np.any(a_zp != 0):
        raise _Skip("activation DequantizeLinear zero point is not 0")
    q = g.op(a_dq.input[0], "QuantizeLinear")
    if q is None:
        raise _Skip("activation DequantizeLinear does not follow a QuantizeLinear")
    x, mode, params = _binarizer(g, q)
    scale = (a_scale * np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (n,))).astype(np.float32)
    bias, out = np.zeros(n, np.float32), mm.output[0]
    users = g.consumers.get(out, [])
    if len(users) == 1 and users[0].op_type == "Add" and out not in g.outputs:
        split = g.split_const(users[0])
        if split is not None and split[0] == out and split[1].dtype == np.float32 and split[1].size == n:
            bias, out = split[1].reshape(n), users[0].output[0]
    if keep_gelu and _feeds_gelu(g, out):
        raise _Skip("feeds a GELU, which OpenVINO fuses into the INT8 FullyConnected (keep_gelu)")
    return {"x": x, "mode": mode, "params": params, "codes": codes, "scale": scale, "bias": bias, "out": out, "k": k, "n": n}


def _prune(graph) -> None:
    """Drop nodes and initializers nothing reads any more."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def rewrite(model, *, keep_gelu: bool = False) -> tuple[Any, dict[str, Any]]:
    """A copy of ``model`` with each binary x binary matmul replaced by ``BinaryMatMul``, and a report.

    The report lists the rewritten matmuls (name, K, N, mode) and the others with the reason they stay.
    ``keep_gelu`` leaves the matmuls whose output feeds a GELU as they are: OpenVINO fuses that GELU into
    its INT8 FullyConnected, and a standalone GELU over a ``[rows, 4 hidden]`` tensor costs more than the
    1-bit kernel saves there at large batch (bench/results/xnor)."""
    onnx = require("onnx", for_="rewriting a lowered W1A1 graph for the 1-bit kernel")
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out.graph)
    replaced, kept = [], []
    new_nodes: dict[int, Any] = {}
    for idx, mm in enumerate(out.graph.node):
        if mm.op_type != "MatMul":
            continue
        try:
            m = _match(g, mm, keep_gelu)
        except _Skip as why:
            kept.append({"name": mm.name, "reason": str(why)})
            continue
        base = (mm.name or mm.output[0]).strip("/").replace("/", ".")
        names = [f"{base}.xnor_{part}" for part in ("weight", "scale", "bias", "params")]
        arrays = [xnor.pack_weights(m["codes"].T), m["scale"], m["bias"], m["params"]]
        out.graph.initializer.extend(numpy_helper.from_array(a, nm) for a, nm in zip(arrays, names))
        new_nodes[idx] = helper.make_node(
            xnor.OP_TYPE,
            [m["x"], *names],
            [m["out"]],
            name=f"{mm.name}/BinaryMatMul",
            domain=xnor.DOMAIN,
            n=m["n"],
            k=m["k"],
            mode=m["mode"],
        )
        replaced.append({"name": mm.name, "k": m["k"], "n": m["n"], "mode": m["mode"]})
    if new_nodes:
        produced = {nd.output[0] for nd in new_nodes.values()}
        nodes = []
        for idx, node in enumerate(out.graph.node):
            if idx in new_nodes:
                nodes.append(new_nodes[idx])
            elif not any(o in produced for o in node.output):  # the folded bias Add
                nodes.append(node)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        _prune(out.graph)
        if not any(op.domain == xnor.DOMAIN for op in out.opset_import):
            out.opset_import.append(helper.make_opsetid(xnor.DOMAIN, 1))
    report = {"op": f"{xnor.DOMAIN}.{xnor.OP_TYPE}", "rewritten": replaced, "kept": kept}
    return out, report

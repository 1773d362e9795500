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

:func:`fuse_bits` then joins two rewritten matmuls where the first feeds the second through nothing but
the second's binarizer, optionally behind an erf GELU (a BERT FFN: ``intermediate -> GELU -> output``):
the first emits the second's activation bits directly (``y_bits``), the second reads them (``x_bits``),
and the GELU and the float tensor between them are gone. The bits come from two integer thresholds per
output column, found here by evaluating the float epilogue, the GELU and the binarizer for every dot
product the first matmul can produce (see :func:`bit_thresholds`).

:func:`fuse_attention`, before that, runs each BiT self-attention (binary Q, K, V and {0,1} attention
probabilities between rewritten matmuls) as one ``BinaryAttention`` node on packed bits: the Q/K/V
matmuls emit their binarizers' bits, the attention emits the output projection's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekit.deploy.kernels import xnor
from edgekit.deps import require


def _subgraphs(node) -> list:
    """The graphs an ``If`` (or any control-flow node) holds as attributes."""
    from onnx import AttributeProto

    found = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            found.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            found.extend(a.graphs)
    return found


def _reads(node) -> list[str]:
    """What ``node`` reads: its inputs, and for a control-flow node every name its branches read from outside
    them (an ``If`` of the one-graph exit model reads the hidden state and exit scores of the stages before)."""
    names = [i for i in node.input if i]
    for sub in _subgraphs(node):
        inner = {o for n in sub.node for o in n.output} | {t.name for t in sub.initializer} | {v.name for v in sub.input}
        names.extend(i for n in sub.node for i in _reads(n) if i not in inner)
        names.extend(o.name for o in sub.output if o.name not in inner)
    return names


def _walk(graph, fn, outer: tuple = ()) -> None:
    """``fn(graph, outer)`` on ``graph``, then on every graph nested in it (an ``If``'s branches, theirs, ...),
    ``outer`` the enclosing graphs innermost first. A graph's branches are looked up after ``fn`` has run on it:
    rewriting a graph copies its nodes (protobuf), so a branch found before would be a detached copy."""
    fn(graph, outer)
    for node in graph.node:
        for sub in _subgraphs(node):
            _walk(sub, fn, (graph, *outer))


class _Graph:
    """Producers, consumers and constant values of an ONNX graph (a nested branch reading a value counts as
    a consumer of it, so nothing its branches read is rewritten away)."""

    def __init__(self, graph, outer: tuple = ()) -> None:
        """``outer``: the graphs enclosing ``graph`` (a branch), innermost first; their constants are visible."""
        from onnx import numpy_helper

        self.graph = graph
        self.outer = _Graph(outer[0], outer[1:]) if outer else None
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in _reads(n):
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
        if node is not None and node.op_type == "Identity":  # the exporter's alias of an equal initializer
            return self.const(node.input[0])
        if node is None and self.outer is not None:  # a branch reads the enclosing graph's constants
            return self.outer.const(name)
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
    if clip is not None:  # {0,1}: Clip(Sub(x, beta), 0, hi), codes 0 and 1 whether signed or not
        lo_c = g.const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
        hi_c = g.const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        sub = g.op(clip.input[0], "Sub")
        split = g.split_const(sub) if sub is not None else None
        if split is None or split[0] != sub.input[0]:
            # Clip(x, 0, hi): a threshold of 0, whose subtraction ONNX Runtime's basic optimizations remove (the
            # one-graph exit model is simplified by them); x - 0 is x exactly, so the kernel's codes are the same
            x, beta = clip.input[0], np.zeros((), np.float32)
        else:
            x, beta = sub.input[0], split[1]
        if lo_c is None or hi_c is None:
            raise _Skip("unsigned activations not produced by Clip(Sub(x, beta), 0, hi)")
        clip_lo, clip_hi = _scalar(lo_c, "Clip min"), np.float32(_scalar(hi_c, "Clip max"))
        if clip_lo != 0.0 or _quantize(clip_hi, qscale, lo, hi) != 1:
            raise _Skip("Clip range does not give codes {0, 1}")
        return x, "01", np.array([_scalar(beta, "threshold"), clip_hi, qscale], np.float32)
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
            needed.update(_reads(node))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


GELU_MIN = -0.7517915246935645  # argmin of x * Phi(x): GELU decreases below it, increases above


def _gelu(y: float) -> float:
    return 0.5 * y * (1.0 + math.erf(y / math.sqrt(2.0)))


def _binarize(g: np.ndarray, mode: str, params: np.ndarray) -> np.ndarray:
    """The binarizer's bit for float32 values ``g``, in float32 as the kernel computes it (xnor_matmul.cpp: bit_of)."""
    beta, hi, qscale = (np.float32(v) for v in params)
    g = np.asarray(g, np.float32)
    if mode == "pm1":
        return g >= beta
    return np.minimum(np.maximum(g - beta, np.float32(0)), hi) / qscale > np.float32(0.5)


def _f32_key(v: float) -> int:
    """An integer that orders float32 values as the values are ordered (-0.0 and +0.0 alike)."""
    i = int(np.array([v], np.float32).view(np.int32)[0])
    return i if i >= 0 else -(i & 0x7FFFFFFF)


def _f32_of_key(key: int) -> np.float32:
    bits = key if key >= 0 else (-key) | 0x80000000
    return np.array([bits], np.uint32).view(np.float32)[0]


def _first_true(bit, lo: int, hi: int) -> int | None:
    """The smallest key in [lo, hi] where the monotone (False..., True...) ``bit`` of that key's float holds."""
    if not bit(_f32_of_key(hi)):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if bit(_f32_of_key(mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _y_cuts(gelu: bool, mode: str, params: np.ndarray) -> tuple[np.float32, np.float32]:
    """(yL, yR): a float32 epilogue output y gives bit 1 exactly where y <= yL or y >= yR (either may be infinite)."""
    big = _f32_key(float(np.finfo(np.float32).max))

    def bit(y: np.float32) -> bool:
        g = np.float32(_gelu(float(y))) if gelu else y
        return bool(_binarize(np.array([g]), mode, params)[0])

    inf = np.float32(np.inf)
    if not gelu:  # the binarizer alone: monotone in y
        key = _first_true(bit, -big, big)
        return -inf, (inf if key is None else _f32_of_key(key))
    turn = _f32_key(GELU_MIN)
    right = _first_true(bit, turn, big)  # GELU increases from its minimum on
    left = _first_true(lambda y: bit(_f32_of_key(-_f32_key(y))), -turn, big)  # mirrored: the decreasing branch
    y_r = inf if right is None else _f32_of_key(right)
    y_l = -inf if left is None else _f32_of_key(-left)
    return y_l, y_r


def bit_thresholds(scale, bias, k: int, gelu: bool, mode: str, params) -> tuple[np.ndarray, np.ndarray]:
    """The i32 thresholds (ge, le) of a BinaryMatMul's ``y_bits`` output: for every integer dot product d in
    [-k, k] of output column n, ``(d >= ge[n]) | (d <= le[n])`` is the bit the next binarizer (``mode``,
    ``params``) gives ``GELU(float32(d) * scale[n] + bias[n])`` (the GELU only if ``gelu``), in float32 as the
    unfused graph computes the epilogue and the binarizer (the GELU exact, in float64, rounded to float32).
    Raises ValueError if some column's bits are not of that form (they always are for a monotone binarizer
    after an affine map and a GELU; the check keeps a wrong fusion from shipping)."""
    scale, bias = np.asarray(scale, np.float32), np.asarray(bias, np.float32)
    y_l, y_r = _y_cuts(gelu, mode, np.asarray(params, np.float32))
    d = np.arange(-k, k + 1, dtype=np.int64)
    y = d.astype(np.float32)[:, None] * scale[None, :] + bias[None, :]  # float32, rounded after each op
    bits = (y >= y_r) | (y <= y_l)
    rows = len(d)
    lead = np.where(bits.all(axis=0), rows, np.argmin(bits, axis=0))
    trail = np.where(bits.all(axis=0), rows, np.argmin(bits[::-1], axis=0))
    le = np.where(lead == rows, k, -k - 1 + lead).astype(np.int64)
    ge = np.where(lead == rows, k + 1, k + 1 - trail).astype(np.int64)
    if not np.array_equal((d[:, None] >= ge[None, :]) | (d[:, None] <= le[None, :]), bits):
        bad = int(np.flatnonzero(((d[:, None] >= ge[None, :]) | (d[:, None] <= le[None, :]) != bits).any(axis=0))[0])
        raise ValueError(f"column {bad}: its bits over the dot products are not a low run and a high run")
    return ge.astype(np.int32), le.astype(np.int32)


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_attr(node, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    from onnx import helper

    node.attribute.append(helper.make_attribute(name, value))


def _is_binary_matmul(node) -> bool:
    return node is not None and node.op_type == xnor.OP_TYPE and node.domain == xnor.DOMAIN


def _only_reader(g: _Graph, name: str, node) -> bool:
    return name not in g.outputs and [id(u) for u in g.consumers.get(name, [])] == [id(node)]


def _gelu_source(g: _Graph, x: str) -> tuple[str, list] | None:
    """(y, the GELU's nodes) if ``x`` is ``GELU(y)`` as exported (erf form, or one Gelu node), read only there."""
    node = g.producer.get(x)
    if node is None:
        return None
    if node.op_type == "Gelu" and _attr(node, "approximate", b"none") in (b"none", "none"):
        return node.input[0], [node]
    half = g.split_const(node) if node.op_type == "Mul" else None  # Mul(Mul(y, Add(Erf(Div(y, sqrt 2)), 1)), 0.5)
    if half is None or not np.allclose(half[1], 0.5):
        return None
    outer = g.op(half[0], "Mul")
    if outer is None or not _only_reader(g, half[0], node):
        return None
    for y, e in ((outer.input[0], outer.input[1]), (outer.input[1], outer.input[0])):
        add = g.op(e, "Add")
        one = g.split_const(add) if add is not None else None
        erf = g.op(one[0], "Erf") if one is not None and np.allclose(one[1], 1.0) else None
        div = g.op(erf.input[0], "Div") if erf is not None else None
        root = g.split_const(div) if div is not None else None
        if root is None or root[0] != y or not np.allclose(root[1], math.sqrt(2.0)):
            continue
        inner = [div, erf, add]
        if all(_only_reader(g, n.output[0], nxt) for n, nxt in zip(inner, [erf, add, outer])):
            readers = {id(u) for u in g.consumers.get(y, [])}
            if readers == {id(div), id(outer)} and y not in g.outputs:
                return y, [div, erf, add, outer, node]
    return None


def _join(g: _Graph, second) -> tuple[Any, list, np.ndarray, np.ndarray]:
    """(first matmul, GELU nodes, ge, le) to join ``second`` to the binary matmul feeding it; _Skip says why not."""
    x, gelu_nodes = second.input[0], []
    source = _gelu_source(g, x)
    if source is not None:
        x, gelu_nodes = source
    first = g.producer.get(x)
    if not _is_binary_matmul(first) or _attr(first, "y_bits", 0):
        raise _Skip("its input is not (a GELU of) another rewritten matmul's output")
    if not gelu_nodes and not _only_reader(g, x, second):
        raise _Skip("the matmul before it has other readers")
    scale, bias, params = g.const(first.input[2]), g.const(first.input[3]), g.const(second.input[4])
    if scale is None or bias is None or params is None:
        raise _Skip("scale, bias or binarizer constants are not constant")
    mode = _attr(second, "mode")
    try:
        ge, le = bit_thresholds(
            scale, bias, int(_attr(first, "k")), bool(gelu_nodes), mode.decode() if isinstance(mode, bytes) else mode, params
        )
    except ValueError as err:
        raise _Skip(str(err)) from err
    return first, gelu_nodes, ge, le


def fuse_bits(graph, outer: tuple = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Join rewritten binary matmuls in ONNX ``graph`` (changed in place) that feed one another through a binarizer
    (and a GELU): the first emits packed bits, the second reads them. Returns (one record per join, the
    rewritten matmuls not joined to the one before them, each with the reason)."""

    g = _Graph(graph, outer)
    fused, apart = [], []
    for second in [n for n in graph.node if _is_binary_matmul(n) and not _attr(n, "x_bits", 0)]:
        try:
            first, gelu_nodes, ge, le = _join(g, second)
        except _Skip as why:
            apart.append({"name": second.name, "reason": str(why)})
            continue
        _emit_bits(graph, first, ge, le)
        _set_attr(second, "x_bits", 1)
        second.input[0] = first.output[0]
        fused.append({"from": first.name, "to": second.name, "gelu": bool(gelu_nodes)})
    if fused:
        _forget_types(graph, {g.producer[n.input[0]].output[0] for n in graph.node if _attr(n, "x_bits", 0) and n.input[0] in g.producer})
        _prune(graph)
    return fused, apart


def _forget_types(graph, names: set[str]) -> None:
    """Drop the inferred types of tensors that now hold u8 bits, not the float shape inferred before."""
    infos = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _private(g: _Graph, last, sink, tops: set[str], keep: str) -> bool:
    """True if the nodes computing ``last`` from ``tops`` and ``keep`` (constants and Reshape target shapes aside)
    are read by nothing but each other and ``sink``, and ``tops`` by nothing but those nodes and Shape nodes
    (``keep`` may have other readers: it stays)."""
    nodes, stack = {}, [last]
    while stack:
        n = stack.pop()
        if id(n) in nodes:
            continue
        nodes[id(n)] = n
        ins = n.input[:1] if n.op_type == "Reshape" else n.input
        stack.extend(g.producer[i] for i in ins if i and i not in tops and i != keep and i in g.producer and g.const(i) is None)
    inner = set(nodes)
    for n in nodes.values():
        for o in n.output:
            if o in g.outputs or any(id(u) not in inner and u is not sink for u in g.consumers.get(o, [])):
                return False
    # a Shape node may stay (it reads batch and sequence, dims 0 and 1, which the bits keep)
    return all(t not in g.outputs and all(id(u) in inner or u.op_type == "Shape" for u in g.consumers.get(t, [])) for t in tops)


def _perm(node) -> list[int] | None:
    return list(_attr(node, "perm", [])) if node is not None and node.op_type == "Transpose" else None


def _head_dim(g: _Graph, reshape) -> int | None:
    """The last entry of a Reshape's target shape (constant, or a Concat ending in a constant)."""
    shape = g.const(reshape.input[1])
    if shape is None:
        concat = g.op(reshape.input[1], "Concat")
        shape = g.const(concat.input[-1]) if concat is not None else None
    return int(shape.reshape(-1)[-1]) if shape is not None and shape.size >= 1 else None


def _act(g: _Graph, name: str, perm: list[int], what: str) -> dict[str, Any]:
    """One binary activation of attention: ``name`` is DequantizeLinear(QuantizeLinear(binarizer(x))); for Q, K, V,
    x is Transpose(``perm``)(Reshape(a rewritten matmul's output)); for the probabilities perm is empty."""
    dq = g.op(name, "DequantizeLinear")
    q = g.op(dq.input[0], "QuantizeLinear") if dq is not None else None
    if q is None:
        raise _Skip(f"{what} is not a quantized activation")
    zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    if zp is None or np.any(zp != 0):
        raise _Skip(f"{what}'s zero point is not 0")
    x, mode, params = _binarizer(g, q)
    found = {"x": x, "mode": mode, "params": params, "scale": np.float32(_scalar(g.const(dq.input[1]), f"{what} scale")), "dq": dq}
    if not perm:
        return found
    tr = g.producer.get(x)
    if _perm(tr) != perm:
        raise _Skip(f"{what} is not a head split (Transpose {perm} of a Reshape)")
    rs = g.op(tr.input[0], "Reshape")
    mm = g.producer.get(rs.input[0]) if rs is not None else None
    if not _is_binary_matmul(mm) or _attr(mm, "y_bits", 0):
        raise _Skip(f"{what} does not come from a rewritten binary matmul")
    if mode != "pm1":
        raise _Skip(f"{what} is not a sign binarizer")
    found.update(mm=mm, head_dim=_head_dim(g, rs))
    return found


def _is_float(g: _Graph, name: str) -> bool:
    """False where the graph says ``name`` is not float32 (a Cast to another type, a typed input or value)."""
    from onnx import TensorProto

    node = g.producer.get(name)
    if node is not None and node.op_type == "Cast":
        return _attr(node, "to") == TensorProto.FLOAT
    typed = {v.name: v.type.tensor_type.elem_type for v in (*g.graph.input, *g.graph.value_info)}
    return typed.get(name, TensorProto.FLOAT) in (TensorProto.FLOAT, TensorProto.UNDEFINED)


def _attention(g: _Graph, sm) -> dict[str, Any]:
    """The binary attention around Softmax ``sm`` (see :func:`fuse_attention`); _Skip says why not."""
    axis = _attr(sm, "axis", -1)
    add = g.op(sm.input[0], "Add")
    if axis not in (-1, 3) or add is None:
        raise _Skip("the softmax is not over the last axis of scores plus a mask")
    scaled_first = [
        (s, m)
        for s, m in ((add.input[0], add.input[1]), (add.input[1], add.input[0]))
        if s in g.producer and g.producer[s].op_type in ("Mul", "Div") and g.split_const(g.producer[s]) is not None
    ]
    if not scaled_first:
        raise _Skip("the scores are not a matmul scaled by a constant")
    scores, mask = scaled_first[0]
    if not _is_float(g, mask):
        raise _Skip("the mask added to the scores is not float32")
    scaled = g.producer[scores]
    mm_var, c = g.split_const(scaled)
    qk = g.op(mm_var, "MatMul")
    if qk is None:
        raise _Skip("the scores are not a matmul scaled by a constant")
    q = _act(g, qk.input[0], [0, 2, 1, 3], "the query")
    k = _act(g, qk.input[1], [0, 2, 3, 1], "the key")
    users = g.consumers.get(sm.output[0], [])
    if len(users) != 1 or sm.output[0] in g.outputs:
        raise _Skip("the probabilities have other readers")
    # Clip(Sub(p, beta)), or Clip(p) where a zero threshold's Sub was optimized away (see _binarizer)
    clip = (
        users[0] if users[0].op_type == "Clip" else next((u for u in g.consumers.get(users[0].output[0], []) if u.op_type == "Clip"), None)
    )
    pq = g.consumers.get(clip.output[0], [None])[0] if clip is not None else None
    pdq = g.consumers.get(pq.output[0], [None])[0] if pq is not None and pq.op_type == "QuantizeLinear" else None
    mm = g.consumers.get(pdq.output[0], [None])[0] if pdq is not None and pdq.op_type == "DequantizeLinear" else None
    if mm is None or mm.op_type != "MatMul" or mm.input[0] != pdq.output[0]:
        raise _Skip("the probabilities do not feed a matmul through a binarizer")
    p = _act(g, mm.input[0], [], "the probabilities")
    if p["x"] != sm.output[0] or p["mode"] != "01":
        raise _Skip("the probabilities' binarizer is not {0, 1}")
    v = _act(g, mm.input[1], [0, 2, 1, 3], "the value")
    tr = g.consumers.get(mm.output[0], [])
    rs = g.consumers.get(tr[0].output[0], []) if len(tr) == 1 and _perm(tr[0]) == [0, 2, 1, 3] else []
    outs = g.consumers.get(rs[0].output[0], []) if len(rs) == 1 and rs[0].op_type == "Reshape" else []
    if len(outs) != 1 or not _is_binary_matmul(outs[0]) or _attr(outs[0], "x_bits", 0) or rs[0].output[0] in g.outputs:
        raise _Skip("the attention output does not feed one rewritten binary matmul (the output projection)")
    n = {int(_attr(a["mm"], "n")) for a in (q, k, v)}
    d = {a["head_dim"] for a in (q, k, v)}
    if len(n) != 1 or len(d) != 1 or None in d or not 0 < next(iter(d)) <= 4096 or next(iter(n)) % next(iter(d)):
        raise _Skip("Q, K and V do not split into heads alike")
    o = outs[0]
    if not _private(g, rs[0], o, {a["mm"].output[0] for a in (q, k, v)}, mask):
        raise _Skip("a tensor inside the attention is read elsewhere")
    o_mode = _attr(o, "mode")
    return {
        "q": q,
        "k": k,
        "v": v,
        "mask": mask,
        "out": o,
        "e": n.pop(),
        "head_dim": d.pop(),
        "div": scaled.op_type == "Div",
        "o_mode": o_mode.decode() if isinstance(o_mode, bytes) else o_mode,
        "params": np.concatenate(
            [
                [np.float32(q["scale"] * k["scale"]), np.float32(_scalar(c, "score scale"))],
                p["params"],
                [np.float32(p["scale"] * v["scale"])],
                g.const(o.input[4]).astype(np.float32),
            ]
        ).astype(np.float32),
    }


def _emit_bits(graph, mm, ge, le) -> None:
    """Make rewritten matmul ``mm`` emit packed bits by thresholds (ge, le) instead of floats."""
    from onnx import numpy_helper

    base = mm.name or mm.output[0]
    names = [f"{base}.bits_ge", f"{base}.bits_le"]
    graph.initializer.extend(numpy_helper.from_array(t, nm) for t, nm in zip((ge, le), names))
    mm.input[2], mm.input[3] = names
    _set_attr(mm, "y_bits", 1)


def _one_input(g: _Graph, mms: list) -> bool:
    """True if the rewritten matmuls read one float input with one binarizer form (Q, K, V of a BERT layer; each
    may have its own threshold and scale)."""
    keys = {(m.input[0], _attr(m, "mode"), _attr(m, "k"), _attr(m, "x_bits", 0)) for m in mms}
    params = [g.const(m.input[4]) for m in mms]
    return len(keys) == 1 and not _attr(mms[0], "x_bits", 0) and all(p is not None and p.size == 3 for p in params)


def _join_qkv(g: _Graph, graph, mms: list, thresholds: list, e: int) -> str:
    """Turn the first of ``mms`` (Q, K, V, each ``e`` outputs) into one matmul emitting the bits of all three, each
    from a 64-bit word boundary (padding columns never set); returns its output. The other two are left unread."""
    from onnx import numpy_helper

    k, ew = int(_attr(mms[0], "k")), -(-e // 64)
    weights, ges, les = [], [], []
    for mm, (ge, le) in zip(mms, thresholds):
        w = g.const(mm.input[1])
        weights.append(np.concatenate([w, np.zeros((4 * ew - len(w), *w.shape[1:]), w.dtype)]))  # 16 outputs a block
        ges.append(np.concatenate([ge, np.full(64 * ew - e, k + 1, np.int32)]))  # a dot product is never above k
        les.append(np.concatenate([le, np.full(64 * ew - e, -k - 1, np.int32)]))
    first = mms[0]
    name = first.name.removesuffix("/BinaryMatMul").replace("/query/", "/qkv/")
    params = np.concatenate([g.const(mm.input[4]) for mm in mms])
    inits = {
        f"{name}.xnor_weight": np.concatenate(weights),
        f"{name}.bits_ge": np.concatenate(ges),
        f"{name}.bits_le": np.concatenate(les),
        f"{name}.xnor_params": params.astype(np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(a, nm) for nm, a in inits.items())
    first.input[1], first.input[2], first.input[3], first.input[4] = inits
    _set_attr(first, "n", 3 * 64 * ew)  # 9 params: 3 sections
    _set_attr(first, "y_bits", 1)
    return first.output[0]


def fuse_attention(graph, outer: tuple = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Replace each binary self-attention of ONNX ``graph`` (changed in place) with one ``BinaryAttention`` node.

    BiT's W1A1 attention, as lowered: Q, K, V from rewritten binary matmuls, split into heads, each through a
    sign binarizer; scores = Q K^T scaled by a constant plus the mask; softmax; the probabilities through a
    {0, 1} binarizer; times V; heads merged into the output projection's binary matmul. The Q, K and V
    matmuls then emit their binarizers' bits (``y_bits``, thresholds from :func:`bit_thresholds`), the
    attention reads them and emits the output projection's input bits (``x_bits``): the head split and
    merge, the float Q/K/V/probability tensors and the binarizers between them are gone (see
    ``xnor_matmul.cpp``: BinaryAttention). Where Q, K and V read one input alike (BERT), one matmul computes
    the bits of all three (``qkv``). Returns (one record per fused attention, the softmaxes left alone,
    each with the reason)."""
    from onnx import numpy_helper

    g = _Graph(graph, outer)
    fused, apart, before = [], [], {}
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        try:
            a = _attention(g, sm)
            thresholds = [
                bit_thresholds(
                    g.const(x["mm"].input[2]), g.const(x["mm"].input[3]), int(_attr(x["mm"], "k")), False, x["mode"], x["params"]
                )
                for x in (a["q"], a["k"], a["v"])
            ]
        except (_Skip, ValueError) as why:
            apart.append({"name": sm.name, "reason": str(why)})
            continue
        base = (sm.name or sm.output[0]).strip("/").replace("/", ".").removesuffix(".Softmax")
        mms = [a[x]["mm"] for x in "qkv"]
        if _one_input(g, mms):  # one matmul computes Q, K and V: one call, one pass over the input
            bits = [_join_qkv(g, graph, mms, thresholds, a["e"])]
        else:
            for mm, (ge, le) in zip(mms, thresholds):
                _emit_bits(graph, mm, ge, le)
            bits = [mm.output[0] for mm in mms]
        params = f"{base}.xnor_attention_params"
        graph.initializer.append(numpy_helper.from_array(a["params"], params))
        out = f"{base}.xnor_attention_bits"
        heads = a["e"] // a["head_dim"]
        before[a["out"].name or a["out"].output[0]] = xnor.make_attention_node(
            [*(bits * 3 if len(bits) == 1 else bits), a["mask"], params],
            out,
            heads=heads,
            head_dim=a["head_dim"],
            div=a["div"],
            o_mode=a["o_mode"],
            qkv=len(bits) == 1,
            name=f"{base}/BinaryAttention",
        )
        a["out"].input[0] = out
        _set_attr(a["out"], "x_bits", 1)
        fused.append({"name": sm.name, "heads": heads, "head_dim": a["head_dim"], "qkv": len(bits) == 1, "to": a["out"].name, "bits": bits})
    if fused:
        nodes = []
        for node in graph.node:
            if (node.name or node.output[0]) in before:
                nodes.append(before[node.name or node.output[0]])
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        _forget_types(graph, {x for f in fused for x in f.pop("bits")})
        _prune(graph)
    return fused, apart


def rewrite(model, *, keep_gelu: bool = False, bits: bool = True, attention: bool = True) -> tuple[Any, dict[str, Any]]:
    """A copy of ``model`` with each binary x binary matmul replaced by ``BinaryMatMul``, and a report.

    The report lists the rewritten matmuls (name, K, N, mode) and the others with the reason they stay.
    ``keep_gelu`` leaves the matmuls whose output feeds a GELU as they are: OpenVINO fuses that GELU into
    its INT8 FullyConnected, and a standalone GELU over a ``[rows, 4 hidden]`` tensor costs more than the
    1-bit kernel saves there at large batch (bench/results/xnor). ``bits``: join rewritten matmuls that feed
    one another through a binarizer (:func:`fuse_bits`); the report's ``fused`` lists them. ``attention``: run
    each binary self-attention as one ``BinaryAttention`` node (:func:`fuse_attention`); the report's
    ``attention`` lists them, ``attention_apart`` the softmaxes left alone and why.

    Every graph is rewritten, the branches of ``If`` nodes too (the one-graph early-exit model keeps each
    stage's layers in the branch that runs them), each on its own: a pattern is matched within one graph."""
    onnx = require("onnx", for_="rewriting a lowered W1A1 graph for the 1-bit kernel")
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    report: dict[str, Any] = {"op": f"{xnor.DOMAIN}.{xnor.OP_TYPE}"}
    for key in ("rewritten", "kept", "fused", "not_fused", "attention", "attention_apart"):
        report[key] = []

    def one(graph, outer: tuple) -> None:
        for key, items in _rewrite_graph(graph, outer, keep_gelu=keep_gelu, bits=bits, attention=attention).items():
            report[key].extend(items)

    _walk(out.graph, one)
    if report["rewritten"]:
        _walk(out.graph, lambda graph, _: _prune(graph))  # what an outer graph kept only for a branch's old pattern
        if not any(op.domain == xnor.DOMAIN for op in out.opset_import):
            out.opset_import.append(helper.make_opsetid(xnor.DOMAIN, 1))
    return out, report


def _rewrite_graph(graph, outer: tuple, *, keep_gelu: bool, bits: bool, attention: bool) -> dict[str, list]:
    """:func:`rewrite` on one graph (changed in place; its nested graphs are not entered; ``outer``: the graphs
    enclosing it, innermost first, whose constants it may read)."""
    from onnx import numpy_helper

    g = _Graph(graph, outer)
    replaced, kept = [], []
    new_nodes: dict[int, Any] = {}
    for idx, mm in enumerate(graph.node):
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
        graph.initializer.extend(numpy_helper.from_array(a, nm) for a, nm in zip(arrays, names))
        new_nodes[idx] = xnor.make_node([m["x"], *names], m["out"], name=f"{mm.name}/BinaryMatMul", n=m["n"], k=m["k"], mode=m["mode"])
        replaced.append({"name": mm.name, "k": m["k"], "n": m["n"], "mode": m["mode"]})
    if new_nodes:
        produced = {nd.output[0] for nd in new_nodes.values()}
        nodes = []
        for idx, node in enumerate(graph.node):
            if idx in new_nodes:
                nodes.append(new_nodes[idx])
            elif not any(o in produced for o in node.output):  # the folded bias Add
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        _prune(graph)
    att, att_apart = fuse_attention(graph, outer) if attention and new_nodes else ([], [])
    fused, apart = fuse_bits(graph, outer) if bits and new_nodes else ([], [])
    return {"rewritten": replaced, "kept": kept, "fused": fused, "not_fused": apart, "attention": att, "attention_apart": att_apart}

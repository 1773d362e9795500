"""Transformer fusions for ``ort-cpu``: ONNX Runtime's own ``onnxruntime.transformers.optimizer``.

ONNX Runtime's session optimizations (what ``ort-cpu`` saves offline) fuse generic patterns
only; the encoder-specific kernels of its CPU provider (``Attention``,
``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``) come from the Python
fusions of :func:`onnxruntime.transformers.optimizer.optimize_model`, which :func:`fuse` runs
on the exported graph before the session optimizations:

- the number of heads and the hidden size, which the attention fusion needs and cannot find
  in a graph whose reshapes take a dynamic batch and length, are read from the graph
  (:func:`attention_dims`);
- the attention mask is kept raw (``AttentionMaskFormat.AttentionMask``): the fused kernel
  then masks exactly what the exported graph masks, whatever side the padding is on;
- on a quantized (QDQ) graph every quantized matmul must still run on an integer kernel
  (:func:`edgekit.deploy.int8check.ort_report`): the fusion plans of :data:`INT8_PLANS` are
  tried in turn and the first that keeps them all is used; if none does, the graph is left
  unfused and the report says why.

The result records which fused operators the graph holds, counted by op type.

``qattention=True`` (``ort-cpu -o fusion=qattention``) is another fusion, for a lowered graph
whose attention core (Q·Kᵀ, softmax, ·V) is in float (a scheme trained with ``attention_bits=32``):
each layer's three quantized Q/K/V projections and its attention become one ``com.microsoft``
``QAttention`` (and nothing else is fused), the fused INT8 kernel ONNX Runtime's own dynamic quantization gives ``Attention``
(:func:`_qattention`). It is not the same function: QAttention takes one input scale for the
three projections (the largest of their three learned scales is used, so none clips more than
it did), so compile's parity check against the fake-quant model decides, as for any candidate.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.deploy import int8check
from edgekit.deps import is_installed, require

# Fused operators of onnxruntime's contrib domain that the BERT optimizer writes.
FUSED_DOMAIN = "com.microsoft"

# Fusion plans tried in turn on a QDQ graph: (name, FusionOptions attributes switched off).
# The attention fusion matches float Q/K/V projections; around QDQ matmuls it either does not
# match or would replace integer matmuls by a float Attention kernel, which int8check refuses.
INT8_PLANS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("all", ()),
    ("no-attention", ("enable_attention",)),
    ("norm-gelu-only", ("enable_attention", "enable_embed_layer_norm", "enable_bias_skip_layer_norm", "enable_bias_gelu")),
)


# The other fusions are left out of ``qattention``: around a lowered graph's integer matmuls they measured slower
# (SkipLayerNormalization: DISABLED_OPTIMIZERS in ort.py; in one interleaved A/B on MiniLM W2E2A8, QAttention plus
# them ran b32 s128 at 0.87x the throughput and b1 s128 at 1.09x the latency of QAttention alone).
ATTENTION_ONLY = (
    "enable_gelu",
    "enable_layer_norm",
    "enable_skip_layer_norm",
    "enable_bias_skip_layer_norm",
    "enable_bias_gelu",
    "enable_embed_layer_norm",
)


def available() -> str | None:
    """None if the optimizer can run here, else why not."""
    for module, hint in (("onnx", "pip install 'edgekit[export]'"), ("sympy", "pip install sympy")):
        if not is_installed(module):
            return f"{module} is not installed ({hint}): transformer fusions need it"
    return None


def _initializers(graph) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _shape_values(name: str, producers: dict[str, Any], consts: dict[str, Any]) -> list[int | None] | None:
    """The values of a Reshape's shape input: constants where known, None where computed at run time."""
    if name in consts:
        return [int(v) for v in consts[name].reshape(-1)]
    node = producers.get(name)
    if node is None or node.op_type != "Concat":
        return None
    values: list[int | None] = []
    for part in node.input:
        src = producers.get(part)
        if part in consts:
            values += [int(v) for v in consts[part].reshape(-1)]
        elif src is not None and src.op_type == "Unsqueeze" and src.input[0] in consts:
            values += [int(v) for v in consts[src.input[0]].reshape(-1)]
        else:
            values.append(None)
    return values


def attention_dims(model) -> tuple[int, int] | None:
    """(num_heads, hidden_size) of an encoder graph, or None if the graph does not show them.

    The hidden size is the width of the LayerNormalization scales; the heads are the
    ``[batch, sequence, heads, head_size]`` reshape that splits it (``heads * head_size == hidden``,
    the heads often given as -1)."""
    consts = _initializers(model.graph)
    producers = {out: n for n in model.graph.node for out in n.output}
    widths = Counter(
        int(consts[n.input[1]].shape[-1]) for n in model.graph.node if n.op_type == "LayerNormalization" and n.input[1] in consts
    )
    if not widths:
        return None
    hidden = widths.most_common(1)[0][0]
    heads: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        shape = _shape_values(node.input[1], producers, consts)
        if not shape or len(shape) != 4 or not shape[3] or shape[3] <= 0 or hidden % shape[3]:
            continue
        if shape[2] == -1 or (shape[2] or 0) * shape[3] == hidden:  # [B, S, -1, head_size] or [B, S, heads, head_size]
            heads[hidden // shape[3]] += 1
    return (heads.most_common(1)[0][0], hidden) if heads else None


def fused_ops(model) -> dict[str, int]:
    """Counts, by op type, of the contrib-domain (fused) operators in an ONNX ``ModelProto``."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.domain == FUSED_DOMAIN).items()))


def _optimize(model, dims: tuple[int, int] | None, disabled: tuple[str, ...]):
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    for flag in disabled:
        setattr(options, flag, False)
    heads, hidden = dims or (0, 0)
    # The optimizer logs and prints warnings of its own (e.g. a pattern it did not find); what
    # it did is read from the graph it returns.
    # (its modules log under their own top-level names, hence the global switch).
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # opt_level 0: the Python fusions only; the session optimizations follow at compile.
            return optimize_model(model, model_type="bert", num_heads=heads, hidden_size=hidden, optimization_options=options, opt_level=0)
    finally:
        logging.disable(logging.NOTSET)


def fuse(source: Path, dest: Path, *, int8: bool = False, threads: int | None = 1, qattention: bool = False) -> dict[str, Any]:
    """Write ``source`` with ONNX Runtime's transformer fusions to ``dest``; return what was done.

    ``int8``: the source is a QDQ graph whose quantized matmuls must stay on integer kernels.
    ``qattention`` (with ``int8``): each layer's quantized Q/K/V projections and float attention as
    one ``QAttention`` (:func:`_qattention`) and nothing else; where that cannot be used, nothing
    is fused and ``why`` says why.
    Returns ``{"applied": {op_type: count}, "num_heads", "hidden_size", "plan", ...}``; when no
    fusion could be kept, ``dest`` is not written and ``applied`` is empty, with ``why``."""
    ort = require("onnxruntime", for_="transformer fusions")
    onnx = require("onnx", for_="transformer fusions", hint="pip install 'edgekit[export]'")
    model = onnx.load(str(source))
    dims = attention_dims(model)
    report: dict[str, Any] = {
        "optimizer": f"onnxruntime.transformers.optimizer (onnxruntime {ort.__version__})",
        "num_heads": dims[0] if dims else None,
        "hidden_size": dims[1] if dims else None,
        "attention_mask": "raw",
    }
    if dims is None:
        report["note"] = "heads and hidden size not found in the graph: attention left unfused"
    before = fused_ops(model)
    expected = len(int8check.quantized_matmuls(model)) if int8 else 0
    tried = []
    if qattention and not int8:
        return {
            **report,
            "plan": None,
            "applied": {},
            "why": "qattention: the graph is not quantized (fusion=auto fuses a float attention)",
        }
    if qattention:
        fused, why = _qattention(onnx.load(str(source)), dims)
        if fused is not None:
            check = int8check.ort_report(fused.SerializeToString(), threads=threads)
            # each fused layer turns three quantized matmuls into one QAttention, an integer kernel too
            layers = fused_ops(fused).get("QAttention", 0)
            if check["all_int8"] and check["integer_total"] + 2 * layers >= expected:
                onnx.save(fused, str(dest))
                applied = {op: n - before.get(op, 0) for op, n in fused_ops(fused).items() if n > before.get(op, 0)}
                return {**report, "plan": "qattention", "applied": applied}
            why = int8check.fallback_message("onnxruntime", check)
        return {**report, "plan": None, "applied": {}, "why": f"qattention: {why}"}
    for name, disabled in INT8_PLANS if int8 else INT8_PLANS[:1]:
        fused = _optimize(onnx.load(str(source)), dims, disabled).model
        applied = {op: n - before.get(op, 0) for op, n in fused_ops(fused).items() if n > before.get(op, 0)}
        if not applied:
            tried.append(f"{name}: no pattern matched")
            continue
        if int8:
            check = int8check.ort_report(fused.SerializeToString(), threads=threads)
            if not check["all_int8"] or check["integer_total"] < expected:
                tried.append(f"{name}: {int8check.fallback_message('onnxruntime', check)}")
                continue
        onnx.save(fused, str(dest))
        return {**report, "plan": name, "applied": applied, **({"refused": tried} if tried else {})}
    return {**report, "plan": None, "applied": {}, "why": "; ".join(tried)}


def _qdq_matmuls(graph, consts: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """The quantized linear layers of a QDQ graph: ``(MatMul node, what it computes)``.

    A layer: ``MatMul(DequantizeLinear(QuantizeLinear(x)), DequantizeLinear(codes))`` with int8
    codes, a per-tensor or per-output-column scale, a symmetric activation quantizer and zero
    points of zero for the weights (what :mod:`edgekit.build.lower` writes)."""
    producers = {out: n for n in graph.node for out in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        a_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if getattr(a_dq, "op_type", "") != "DequantizeLinear" or getattr(w_dq, "op_type", "") != "DequantizeLinear":
            continue
        a_q = producers.get(a_dq.input[0])
        if (
            getattr(a_q, "op_type", "") != "QuantizeLinear"
            or len(a_q.input) < 3
            or a_q.input[1] not in consts
            or a_q.input[2] not in consts
        ):
            continue
        codes, scale = consts.get(w_dq.input[0]), consts.get(w_dq.input[1])
        zero = consts.get(w_dq.input[2]) if len(w_dq.input) > 2 and w_dq.input[2] else None
        a_zero = consts[a_q.input[2]]
        if codes is None or scale is None or codes.dtype.name != "int8" or codes.ndim != 2 or a_zero.any():
            continue
        if (zero is not None and zero.any()) or scale.size not in (1, codes.shape[1]):
            continue
        layer = {
            "x": a_q.input[0],
            "codes": codes,
            "scale": scale.reshape(-1).astype("float32"),
            "input_scale": consts[a_q.input[1]].reshape(()).astype("float32"),
            "input_zero_point": a_zero.reshape(()),
        }
        found.append((node, layer))
    return found


def _drop_unused(graph) -> None:
    """Remove, in place, the nodes of ``graph`` whose outputs nothing reads (repeatedly), and unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        read |= {i for n in graph.node for sub in _subgraphs(n) for m in sub.node for i in m.input}
        kept = [n for n in graph.node if any(o in read for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def _requantized(node, layer: dict[str, Any], numpy_helper, helper) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) that make ``node`` (a MatMul of ``layer``'s float weight) its QDQ form again."""
    import numpy as np

    p = f"{node.name or node.output[0]}/qdq"
    inits = [
        numpy_helper.from_array(layer["codes"], f"{p}/codes"),
        numpy_helper.from_array(layer["scale"], f"{p}/scale"),
        numpy_helper.from_array(np.zeros(layer["scale"].shape, np.int8), f"{p}/zero_point"),
        numpy_helper.from_array(layer["input_scale"], f"{p}/input_scale"),
        numpy_helper.from_array(layer["input_zero_point"], f"{p}/input_zero_point"),
    ]
    axis = {"axis": 1} if layer["scale"].size > 1 else {}
    nodes = [
        helper.make_node("QuantizeLinear", [node.input[0], f"{p}/input_scale", f"{p}/input_zero_point"], [f"{p}/xq"], name=f"{p}/q"),
        helper.make_node("DequantizeLinear", [f"{p}/xq", f"{p}/input_scale", f"{p}/input_zero_point"], [f"{p}/x"], name=f"{p}/dq"),
        helper.make_node("DequantizeLinear", [f"{p}/codes", f"{p}/scale", f"{p}/zero_point"], [f"{p}/w"], name=f"{p}/dqw", **axis),
    ]
    node.input[:] = [f"{p}/x", f"{p}/w"]
    return nodes, inits


def _qattention(model, dims: tuple[int, int] | None) -> tuple[Any, str | None]:
    """(the graph with a ``QAttention`` per fused layer, None) or (None, why not).

    ONNX Runtime's optimizer finds the attention pattern (the same code that fuses a float
    export): every quantized linear layer is shown to it as a float matmul of its exact float
    weight (codes times scales). Each ``Attention`` it writes becomes ``QuantizeLinear`` +
    ``QAttention`` on the three projections' int8 codes, their per-column scales and one input
    scale; every other linear layer is given its QDQ form back. A float weight that ends up
    anywhere else leaves the whole graph as it was."""
    import numpy as np
    from onnx import helper, numpy_helper

    if dims is None:
        return None, "heads and hidden size not found in the graph"
    graph = model.graph
    layers = _qdq_matmuls(graph, _initializers(graph))
    if not layers:
        return None, "no quantized linear layers"
    by_name: dict[str, dict[str, Any]] = {}
    by_bytes: dict[bytes, dict[str, Any]] = {}
    for node, layer in layers:
        w = (layer["codes"].astype(np.float32) * layer["scale"]).astype(np.float32)
        name = f"{node.name or node.output[0]}/float_weight"
        graph.initializer.append(numpy_helper.from_array(w, name))
        by_name[name], by_bytes[w.tobytes()] = layer, layer
        node.input[:] = [layer["x"], name]
    _drop_unused(graph)  # the quantizers just bypassed: the optimizer's patterns count a tensor's readers
    fused = _optimize(model, dims, ATTENTION_ONLY).model
    fg = fused.graph
    inits = {t.name: t for t in fg.initializer}
    added, nodes, count = [], [], 0
    for node in fg.node:
        if node.op_type == "Attention" and node.domain == FUSED_DOMAIN:
            made = _to_qattention(node, inits, by_bytes, np, numpy_helper, helper)
            if isinstance(made, str):
                return None, made
            nodes += made[0]
            added += made[1]
            count += 1
            continue
        floats = [i for i in node.input if i in by_name]
        if floats:
            if node.op_type != "MatMul" or node.input[1] != floats[0] or len(floats) > 1:
                return None, f"a quantized weight ended up in a fused {node.op_type}"
            more, inits_more = _requantized(node, by_name[floats[0]], numpy_helper, helper)
            nodes += more
            added += inits_more
        nodes.append(node)
    if not count:
        return None, "the attention pattern matched no layer (is the attention core quantized? attention_bits=32 keeps it float)"
    del fg.node[:]
    fg.node.extend(nodes)
    fg.initializer.extend(added)
    _drop_unused(fg)
    return fused, None


def _to_qattention(node, inits, by_bytes, np, numpy_helper, helper) -> tuple[list[Any], list[Any]] | str:
    """``QuantizeLinear`` + ``QAttention`` (and their initializers) for a fused float ``Attention``, or why not."""
    extra = {a.name for a in node.attribute} - {"num_heads", "unidirectional"}
    if extra or len(node.input) < 3 or node.input[1] not in inits or any(node.input[4:]):
        return f"an Attention node QAttention cannot take ({', '.join(sorted(extra)) or 'its inputs'})"
    blocks = np.split(numpy_helper.to_array(inits[node.input[1]]), 3, axis=1)
    parts = [by_bytes.get(np.ascontiguousarray(b).tobytes()) for b in blocks]
    if any(part is None for part in parts):
        return "an Attention weight is not three quantized projections"
    codes = np.concatenate([part["codes"] for part in parts], axis=1)
    scales = np.concatenate([np.broadcast_to(part["scale"], (b.shape[1],)) for part, b in zip(parts, blocks)]).astype(np.float32)
    # one input scale for Q, K and V: the largest, so no projection's input clips more than it did
    s_in = max(float(part["input_scale"]) for part in parts)
    signed = {part["input_zero_point"].dtype.name for part in parts}
    if len(signed) != 1:
        return "Q, K and V quantize their input with different types"
    p = f"{node.name or node.output[0]}/q"
    inits_new = [
        numpy_helper.from_array(codes.astype(np.int8), f"{p}/codes"),
        numpy_helper.from_array(scales, f"{p}/weight_scale"),
        numpy_helper.from_array(np.array(s_in, np.float32), f"{p}/input_scale"),
        # QAttention reads uint8: a signed (int8) input moves up by 128, an unsigned one keeps its zero point 0
        numpy_helper.from_array(np.array(128 if signed == {"int8"} else 0, np.uint8), f"{p}/input_zero_point"),
        numpy_helper.from_array(np.array(0, np.int8), f"{p}/weight_zero_point"),
    ]
    mask = node.input[3] if len(node.input) > 3 else ""
    inputs = [
        f"{p}/input",
        f"{p}/codes",
        node.input[2],
        f"{p}/input_scale",
        f"{p}/weight_scale",
        mask,
        f"{p}/input_zero_point",
        f"{p}/weight_zero_point",
    ]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return [
        helper.make_node(
            "QuantizeLinear", [node.input[0], f"{p}/input_scale", f"{p}/input_zero_point"], [f"{p}/input"], name=f"{p}/quantize"
        ),
        helper.make_node("QAttention", inputs, list(node.output), name=node.name, domain=FUSED_DOMAIN, **attrs),
    ], inits_new


def _subgraphs(node) -> list[Any]:
    return [a.g for a in node.attribute if a.type == 5]  # AttributeProto.GRAPH (an If's branches)


def _fold_in(graph, outer: dict[str, Any]) -> int:
    """:func:`fold_matmul_bias` on one graph and its subgraphs (``outer``: initializers in scope)."""
    from collections import defaultdict

    inits = outer | {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
        for sub in _subgraphs(node):  # a value read inside a branch has a consumer there
            for inner in sub.node:
                for name in inner.input:
                    consumers[name].append(inner)
    outputs = {o.name for o in graph.output}
    folded: set[str] = set()  # the folded Adds' outputs, which their matmuls now write
    for node in graph.node:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) > 6 or node.output[0] in outputs:
            continue
        users = consumers[node.output[0]]
        if len(users) != 1 or users[0].op_type != "Add" or users[0] not in graph.node or node.input[1] not in inits:
            continue
        add = users[0]
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        # a bias of the weight's output width only (an Add of a broadcast scalar is not a bias)
        if bias not in inits or list(inits[bias].dims) != list(inits[node.input[1]].dims[-1:]):
            continue
        node.input.extend([""] * (6 - len(node.input)) + [bias])  # inputs 4-5 (zero points) are optional
        node.output[0] = add.output[0]
        folded.add(add.output[0])
    if folded:
        kept = [n for n in graph.node if not (n.op_type == "Add" and n.output[0] in folded)]
        del graph.node[:]
        graph.node.extend(kept)
    return len(folded) + sum(_fold_in(sub, inits) for node in graph.node for sub in _subgraphs(node))


def fold_matmul_bias(path: Path) -> int:
    """Fold each bias ``Add`` after a ``MatMulIntegerToFloat`` into the op's own ``bias`` input, in place.

    ONNX Runtime turns a lowered graph's QDQ matmuls into ``MatMulIntegerToFloat`` but leaves the
    linear layer's bias as a separate ``Add``; the contrib op takes a bias and adds it as the
    integer GEMM writes its output. Folded: an ``Add`` of a 1-D initializer that is the matmul's
    only consumer (in subgraphs too: the one-graph exit model's ``If`` branches). On a lowered
    MiniLM-L6 (30 such Adds) the outputs were bit-identical and the graph 5 % faster at real
    length, 4 % at 128 tokens (onnxruntime 1.32, 2-core Xeon). Returns how many were folded (0
    leaves the file untouched)."""
    onnx = require("onnx", for_="folding matmul biases")
    model = onnx.load(str(path))
    folded = _fold_in(model.graph, {})
    if folded:
        onnx.save(model, str(path))
    return folded


def unique_names(path: Path) -> int:
    """Rename, in place, values that a subgraph defines under a name already defined elsewhere in the model.

    ONNX Runtime's QDQ transformers name the values they add per graph (``qdq_s8_to_u8_quant``...),
    so a saved model with several ``If`` branches holding quantized matmuls (the one-graph exit
    model) defines one name in several graphs, and ONNX Runtime itself then refuses to load it
    ("Graph must be in single static assignment (SSA) form"). Returns how many were renamed."""
    onnx = require("onnx", for_="renaming repeated value names")
    model = onnx.load(str(path))
    seen: set[str] = set()
    count = 0

    def visit(graph, renamed: dict[str, str]) -> None:
        nonlocal count
        local = [i.name for i in graph.initializer] + [o for n in graph.node for o in n.output if o]
        renamed = {k: v for k, v in renamed.items() if k not in local}  # a local definition hides an outer rename
        for name in local:
            if name in seen:
                count += 1
                renamed[name] = f"{name}__{count}"
        for init in graph.initializer:
            init.name = renamed.get(init.name, init.name)
        for node in graph.node:
            node.input[:] = [renamed.get(x, x) for x in node.input]
            node.output[:] = [renamed.get(x, x) for x in node.output]
        for value in [*graph.output, *graph.value_info]:
            value.name = renamed.get(value.name, value.name)
        seen.update(i.name for i in graph.initializer)
        seen.update(o for n in graph.node for o in n.output)
        for node in graph.node:
            for sub in _subgraphs(node):
                visit(sub, renamed)

    visit(model.graph, {})
    if count:
        onnx.save(model, str(path))
    return count

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


def fuse(source: Path, dest: Path, *, int8: bool = False, threads: int | None = 1) -> dict[str, Any]:
    """Write ``source`` with ONNX Runtime's transformer fusions to ``dest``; return what was done.

    ``int8``: the source is a QDQ graph whose quantized matmuls must stay on integer kernels.
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

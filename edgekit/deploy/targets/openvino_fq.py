"""Where target ``openvino-cpu`` puts a QDQ graph's activation quantizers: next to a node that can absorb them.

``ov.convert_model`` turns each ``QuantizeLinear -> DequantizeLinear`` pair of a lowered (or PTQ) graph into
one ``FakeQuantize``, where the pair was. The CPU plugin folds a ``FakeQuantize`` into the node that
produces its input (``FullyConnected``, ``Eltwise``, ``MVN``, a Snippets ``Subgraph``) and only when that
node has a single consumer (``GraphOptimizer::FuseFullyConnectedAndSimpleOperation``,
``FuseEltwiseAndSimple``, ``FuseMVNAndSimpleOperation`` in ``src/plugins/intel_cpu/src/graph_optimizer.cpp``);
every other ``FakeQuantize`` runs as a node of its own, an extra pass over the tensor in f32.

In an encoder the attention's Q, K and V quantizers sit after the per-head ``Reshape`` (and K's after its
``Transpose``), and the output projection's after the context's ``Transpose -> Reshape``: that is where
the lowering (:mod:`edgekit.build.qdq`) must put them for ONNX Runtime, which fuses a ``DequantizeLinear``
only when it feeds its matmul directly. Behind a ``Reshape`` the CPU plugin can fuse none of them:
MiniLM-L6 W2E2A8 ran 24 of its 48 ``FakeQuantize`` nodes that way.

:func:`hoist_fake_quantize` moves each per-tensor ``FakeQuantize`` (one scale, one zero point) up through
the ``Reshape``/``Transpose``/``Squeeze``/``Unsqueeze`` chain in front of it. A per-tensor quantizer is
elementwise with the same constants everywhere, so it commutes exactly with any op that only moves or
relabels elements: the graph computes the same function. There ``FullyConnected`` (Q, K, V) and the
attention ``Subgraph`` (its output) absorb it, and the data-movement ops after them run on int8. The fused
requantization rounds in another float order than the standalone node, so a value within an ulp of a step
may take the neighbouring code, as between any two runtimes (MiniLM W2E2A8, 4 QAT steps: worst-row cosine
against the fake-quant model 0.99582 after, 0.99584 before).

The quantizers of a LayerNorm's output (Q/K/V and FFN inputs) stay standalone: the LayerNorm also feeds
the float residual ``Add``, so its ``MVN``/``Eltwise`` has two consumers and cannot take one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.deps import require

MOVABLE = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _per_tensor_ranges(fq: Any) -> list[np.ndarray] | None:
    """The four range constants of a per-tensor ``FakeQuantize`` (one value each), else None."""
    values = []
    for port in range(1, 5):
        node = fq.input_value(port).get_node()
        if node.get_type_name() != "Constant":
            return None
        value = node.get_data()
        if value.size != 1:
            return None
        values.append(value.reshape(()))
    return values


def _movable_producer(fq: Any) -> Any | None:
    """The data-movement node feeding ``fq`` alone, whose own input the quantizer may move to, else None."""
    mover = fq.input_value(0).get_node()
    if mover.get_type_name() not in MOVABLE or len(mover.output(0).get_target_inputs()) != 1:
        return None
    source = mover.input_value(0)
    # the mover must be the source's only reader of values; others may read its shape (a Reshape's target)
    if sum(t.get_node().get_type_name() != "ShapeOf" for t in source.get_target_inputs()) != 1:
        return None
    if source.get_partial_shape().rank.is_dynamic:
        return None
    return mover


def hoist_fake_quantize(model: Any) -> int:
    """Move every per-tensor ``FakeQuantize`` of ``model`` (an ``ov.Model``, changed in place) above the chain of
    data-movement ops that feeds it; return how many moves were made (one per op passed)."""
    ops = require("openvino", for_="target openvino-cpu").opset13
    moves = 0
    for fq in [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
        ranges = _per_tensor_ranges(fq)
        if ranges is None:
            continue
        while (mover := _movable_producer(fq)) is not None:
            source = mover.input_value(0)
            rank = source.get_partial_shape().rank.get_length()
            readers = list(fq.output(0).get_target_inputs())
            # source -> fq -> mover -> readers: the same node, its ranges shaped for the source's rank
            fq.input(0).replace_source_output(source)
            for port, value in enumerate(ranges, start=1):
                fq.input(port).replace_source_output(ops.constant(value.reshape((1,) * rank)).output(0))
            mover.input(0).replace_source_output(fq.output(0))
            for reader in readers:
                reader.replace_source_output(mover.output(0))
            moves += 1
    if moves:
        model.validate_nodes_and_infer_types()
    return moves


# Activations into the int8 matmuls on an unsigned grid.
#
# A lowered graph quantizes activations symmetrically: ``FakeQuantize`` over [-128 s, 127 s], which the CPU
# plugin's low-precision pass reads as i8 (its output range is signed and centred). oneDNN's int8 matmul
# multiplies u8 activations by s8 weights (VNNI ``vpdpbusd``); s8 activations cost it a compensation pass.
# NNCF's IR feeds its matmuls u8 (with a zero point). The plugin still names ours
# ``FullyConnectedQuantizedLegacy`` after the change (a dequantization scale after the matmul); what changes
# is the u8 input. Quantizers inside an ``If`` body (the one-graph exit model) are not visited. Measured (bench/ov_fq_hoist.py --step unsigned,
# MiniLM W2E2A8 lowered, 2-core Xeon with AVX-512 VNNI and no AMX): 0.93-0.96x the wall time of the i8
# graph at b1 real length, b1 s128 and b32 s128 (bench/results/ov-fq-unsigned). On AMX, whose tiles take
# s8 activations as they are, it may not pay: ``unsigned=off`` is one of the autotuner's candidates.
#
# The same codes on the unsigned grid: the quantizer's output range moves from [lo, hi] to [0, hi - lo] (its
# input range, which picks the code, stays), so each matmul reading it sees ``x - lo``; ``lo * colsum(W)``
# (a constant per output column) is added back after it, folded into the bias ``Add`` that follows. The integer products are those of the signed graph plus an
# exact per-column integer offset; only the float order of the rescale differs.
#
# Binary activations (a ``Convert`` of a boolean: BiT/BiBERT's sign binarizer) stay signed. Their codes are +-1,
# so the shift adds 128 codes to a signal of one: the matmul's float epilogue then rounds a sum about 100x the
# signal and cancels it with the folded bias, an error of ~1e-5 relative (measured on a MiniLM W1E1A1 key
# projection: 4e-5 on values up to 5.9). The next binarizer turns such an error into a flipped sign wherever a
# value sits that close to its threshold, and a flip propagates: a 2-step W1E1A1 embedding model compiled with
# the shift ended at cosine 0.775 against PyTorch, 1.000000 without it. An 8-bit activation spans its grid,
# so the shift is of the signal's own order and the rounding it adds stays at an ulp of the output.

_CONST_OPS = {"Multiply": np.multiply, "Subtract": np.subtract, "Add": np.add}


def constant_value(out: Any) -> np.ndarray | None:
    """The value of a weight expression (``Constant``, ``Convert``, elementwise ``Multiply``/``Subtract``/``Add``
    of those, ``Transpose`` by constant order) as float64, else None (not constant, or an op not read here)."""
    node = out.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float64)
    if kind == "Convert":
        return constant_value(node.input_value(0))
    if kind in _CONST_OPS:
        a, b = constant_value(node.input_value(0)), constant_value(node.input_value(1))
        return None if a is None or b is None else _CONST_OPS[kind](a, b)
    if kind == "Transpose":
        value, order = constant_value(node.input_value(0)), constant_value(node.input_value(1))
        return None if value is None or order is None else np.transpose(value, order.astype(int))
    return None


def _weight_readers(fq: Any) -> list[tuple[Any, np.ndarray]] | None:
    """Every matmul reading ``fq``'s output as its activations (through data-movement ops), each with its
    2-D constant weights as [K, N]; None if any reader is anything else (it would see the shifted values)."""
    found = []
    for reader in fq.output(0).get_target_inputs():
        node = reader.get_node()
        if node.get_type_name() == "ShapeOf":
            continue
        while node.get_type_name() in MOVABLE and reader.get_index() == 0 and len(node.output(0).get_target_inputs()) == 1:
            reader = next(iter(node.output(0).get_target_inputs()))
            node = reader.get_node()
        if node.get_type_name() != "MatMul" or reader.get_index() != 0 or node.get_transpose_a():
            return None
        weights = constant_value(node.input_value(1))
        if weights is None or weights.ndim != 2:
            return None
        found.append((node, weights.T if node.get_transpose_b() else weights))
    return found or None


def _add_after(ops: Any, matmul: Any, offset: np.ndarray) -> None:
    """Add the per-column ``offset`` to ``matmul``'s output: into the constant of the bias ``Add`` that is its
    only reader, else as an ``Add`` of its own."""
    readers = list(matmul.output(0).get_target_inputs())
    if len(readers) == 1 and readers[0].get_node().get_type_name() == "Add":
        add, port = readers[0].get_node(), 1 - readers[0].get_index()
        bias = add.input_value(port).get_node()
        if bias.get_type_name() == "Constant" and bias.get_data().shape[-1:] == offset.shape:
            add.input(port).replace_source_output(ops.constant((bias.get_data() + offset).astype(np.float32)).output(0))
            return
    added = ops.add(matmul.output(0), ops.constant(offset.astype(np.float32)))
    for reader in readers:
        reader.replace_source_output(added.output(0))


def _binary(fq: Any) -> bool:
    """True if ``fq`` quantizes a boolean (``Convert`` of a comparison): a sign binarizer's two codes."""
    node = fq.input_value(0).get_node()
    return node.get_type_name() == "Convert" and node.get_input_element_type(0).get_type_name() == "boolean"


def unsign_fake_quantize(model: Any) -> int:
    """Move every signed per-tensor activation ``FakeQuantize`` of ``model`` (changed in place) whose readers are
    all int8-weight matmuls onto the unsigned grid, correcting each matmul's output; return how many moved.
    Binary activations stay signed (see above)."""
    ops = require("openvino", for_="target openvino-cpu").opset13
    moved = 0
    for fq in [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]:
        ranges = _per_tensor_ranges(fq)
        if ranges is None:  # (a weight quantizer is no matmul's input 0: _weight_readers turns it down)
            continue
        lo, hi = float(ranges[2]), float(ranges[3])  # the output grid; the input range only picks the code
        if not lo < 0 < hi or _binary(fq):
            continue
        readers = _weight_readers(fq)
        if readers is None:
            continue
        shape = fq.input_value(3).get_node().get_data().shape
        fq.input(3).replace_source_output(ops.constant(np.zeros(shape, np.float32)).output(0))
        fq.input(4).replace_source_output(ops.constant(np.full(shape, hi - lo, np.float32)).output(0))
        for matmul, weights in readers:
            _add_after(ops, matmul, lo * weights.sum(axis=0))
        moved += 1
    if moved:
        model.validate_nodes_and_infer_types()
    return moved

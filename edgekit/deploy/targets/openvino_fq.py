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

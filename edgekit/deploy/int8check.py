"""Which matmuls a runtime really executes in INT8, asked of the runtime itself.

- ONNX Runtime: the session's optimized graph (``SessionOptions.optimized_model_filepath``)
  is read back; a quantized matmul ran in INT8 when ONNX Runtime fused its
  ``DequantizeLinear`` inputs into an integer kernel (``MatMulIntegerToFloat``,
  ``QLinearMatMul``, ``MatMulInteger``, ``QGemm``, ``DynamicQuantizeMatMul``). A float
  ``MatMul``/``Gemm`` still fed by a ``DequantizeLinear`` is a fallback: it dequantizes and
  multiplies in float (so is ``MatMulNBits``, its weight-only fusion).
- OpenVINO: the compiled model's runtime model (``get_runtime_model()``) gives every executed
  node's ``layerType`` and ``runtimePrecision``; ``FullyConnected``/``MatMul`` nodes at
  ``u8``/``i8`` run in INT8, the others in float.

``expected`` is the number of matmuls with a ``DequantizeLinear`` input in the source ONNX
graph (the lowered/PTQ graph's quantized matmuls); the classifier head and pooler are float
by design and are not expected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgekit.deps import require

INTEGER_OPS = frozenset({"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul", "QAttention"})
# MatMulNBits: ONNX Runtime's fusion of a weight-only DequantizeLinear + MatMul; at the default
# accuracy level it dequantizes the weights and multiplies in float.
FLOAT_MATMULS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits"})
_OV_MATMULS = frozenset({"FullyConnected", "MatMul", "Gemm"})
_OV_INT = frozenset({"u8", "i8", "U8", "I8"})


def nodes(graph) -> list[Any]:
    """Every node of an ONNX graph, its subgraphs' (an ``If``'s branches) included."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == 5:  # AttributeProto.GRAPH
                out += nodes(attr.g)
    return out


def _producers(graph) -> dict[str, Any]:
    return {out: node for node in nodes(graph) for out in node.output}


def quantized_matmuls(model) -> list[str]:
    """Names of the matmuls in an ONNX ``ModelProto`` (subgraphs included) that take a DequantizeLinear output."""
    prod = _producers(model.graph)
    return [
        n.name or n.output[0]
        for n in nodes(model.graph)
        if n.op_type in FLOAT_MATMULS and any(getattr(prod.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)
    ]


def ort_report(model: bytes | str | Path, *, level: str = "all", threads: int | None = 1) -> dict[str, Any]:
    """Counts of integer and float matmuls in ONNX Runtime's optimized graph of ``model``."""
    ort = require("onnxruntime", for_="checking INT8 execution on ONNX Runtime")
    onnx = require("onnx", for_="reading ONNX Runtime's optimized graph")
    source = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    expected = quantized_matmuls(source)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")  # basic, extended, all
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    integer: dict[str, int] = {}
    floats: dict[str, int] = {}
    for node in nodes(optimized.graph):
        if node.op_type in INTEGER_OPS:
            integer[node.op_type] = integer.get(node.op_type, 0) + 1
        elif node.op_type in FLOAT_MATMULS:
            floats[node.op_type] = floats.get(node.op_type, 0) + 1
    # still fed by a DequantizeLinear, or a quantized matmul of the source left as a float
    # matmul of the same name (ONNX Runtime folds a weight-only DequantizeLinear into a float constant)
    still_float = {n.name for n in nodes(optimized.graph) if n.op_type in FLOAT_MATMULS}
    fallback = list(dict.fromkeys([*quantized_matmuls(optimized), *(n for n in expected if n in still_float)]))
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "optimization": level,
        "expected_int8": len(expected),
        "integer_ops": integer,
        "integer_total": sum(integer.values()),
        "float_matmuls": floats,
        "float_fallback": fallback,
        "all_int8": bool(expected) and not fallback and sum(integer.values()) >= len(expected),  # nothing quantized is not INT8
    }


def openvino_report(compiled: Any, expected: int | None = None, bodies: list[Any] = ()) -> dict[str, Any]:
    """Runtime precisions of the matmuls in an OpenVINO ``CompiledModel``.

    OpenVINO's CPU plugin may fuse a whole attention block (QK^T, softmax, PV) into one
    Snippets ``Subgraph``/``MHA`` node; an INT8 one that holds a Softmax counts as the two
    attention matmuls it runs. The runtime model shows an ``If`` as one node: ``bodies`` are its
    branches compiled on their own (:func:`if_bodies`), whose matmuls count too."""
    integer, floats, blocks = [], [], []
    ops = [op for c in (compiled, *bodies) for op in c.get_runtime_model().get_ordered_ops()]
    for op in ops:
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        precision = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        if kind in _OV_MATMULS:
            (integer if precision in _OV_INT else floats).append((op.get_friendly_name(), kind, precision))
        elif kind in ("Subgraph", "MHA", "ScaledDotProductAttention"):
            names = rt["originalLayersNames"].astype(str) if "originalLayersNames" in rt else ""
            if "Softmax" in names or kind != "Subgraph":  # a fused attention block: QK^T and PV
                if precision in _OV_INT:
                    blocks.append(op.get_friendly_name())
                else:
                    floats.append((f"{op.get_friendly_name()} [attention block: 2 matmuls]", kind, precision))
    report = {
        "int8": len(integer) + 2 * len(blocks),
        "int8_matmul_nodes": len(integer),
        "int8_attention_blocks": len(blocks),
        "float": [f"{n} ({k}, {p})" for n, k, p in floats],
        "precisions": sorted({p for _, _, p in integer + floats}),
    }
    if expected is not None:
        report["expected_int8"] = expected
        report["all_int8"] = report["int8"] >= expected
    return report


def if_bodies(model: Any) -> list[Any]:
    """The branches of every ``If`` in an ``ov.Model``, nested ones included (each an ``ov.Model``
    whose own ``If`` nodes are not expanded again: those come in the list themselves)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "If":
            for i in (0, 1):
                body = op.get_function(i)
                out += [body, *if_bodies(body)]
    return out


def fallback_message(runtime: str, report: dict[str, Any]) -> str:
    names = report.get("float_fallback") or report.get("float") or []
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    got = report.get("integer_total", report.get("int8"))
    return f"{runtime} runs {got} of {report['expected_int8']} quantized matmuls in INT8; these fall back to float: {shown or '(unnamed)'}"

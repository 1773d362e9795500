"""Signed INT8 for TensorRT: its Q/DQ are signed and symmetric only, so UINT8 activations are rewritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deploy import parity
from edgekit.deploy.artifact import Manifest
from edgekit.deps import is_installed
from edgekit.errors import ParityError, TargetError

FOR = "target jetson"

# The signed-INT8 graph vs the artifact's reference when 8-bit non-negative activations were
# requantized to 7 bits (signed_qdq): a real change of function, so the bound is looser than
# the lowering's (0.25) and the predictions must agree (measured on MiniLM W2E2A8: max abs logit
# diff 0.36, argmax 32/32); a broken rewrite moves logits by several units.
REQUANTIZED = parity.Tolerance(atol=1.0, min_argmax_agreement=0.96, min_cosine=0.99)


def _constant(model: Any, name: str) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            attr = next((a for a in n.attribute if a.name == "value"), None)
            return numpy_helper.to_array(attr.t) if attr is not None else None
    return None


def signed_qdq(model: Any) -> dict[str, Any]:
    """Rewrite UINT8 Q/DQ pairs as INT8, in place: TensorRT's Q/DQ are signed and symmetric only.

    A UINT8 activation (zero point 0: a non-negative tensor such as attention probabilities or a
    binary {0, 1} activation) becomes an INT8 one:

    - *exactly* when its producer is a ``Clip`` whose maximum is at most 127 steps (binary
      {0, 1} activations: codes 0 and 1 are the same in INT8);
    - otherwise *requantized*: a ``Relu`` keeps the tensor non-negative as UINT8 saturation did,
      and the scale doubles (x 255/127) so the same range fits 0..127: one bit of resolution is
      lost, and the caller must check the rewritten graph against the reference.

    Returns ``{"exact": [...], "requantized": [...], "asymmetric": [...]}`` (QuantizeLinear
    output names); an asymmetric (non-zero zero point) UINT8 tensor is left alone and reported.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    report: dict[str, list[str]] = {"exact": [], "requantized": [], "asymmetric": []}
    added, relu_before = [], {}
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]:
        zp = _constant(model, q.input[2])
        if zp is None or zp.dtype != np.uint8:
            continue
        out = q.output[0]
        dqs = consumers.get(out, [])
        if np.any(zp != 0) or not dqs or any(c.op_type != "DequantizeLinear" for c in dqs):
            report["asymmetric"].append(out)
            continue
        scale = _constant(model, q.input[1])
        src = producer.get(q.input[0])
        high = _constant(model, src.input[2]) if src is not None and src.op_type == "Clip" and len(src.input) > 2 and src.input[2] else None
        exact = scale is not None and high is not None and float(np.max(high)) <= 127 * float(np.min(scale)) * (1 + 1e-6)
        zp_name = f"{out}_zp_s8"
        added.append(numpy_helper.from_array(np.zeros_like(zp, dtype=np.int8), zp_name))
        scale_name = q.input[1]
        if not exact:
            if scale is None:
                report["asymmetric"].append(out)
                continue
            scale_name = f"{out}_scale_s8"
            added.append(numpy_helper.from_array((scale.astype(np.float32) * np.float32(255.0 / 127.0)).astype(np.float32), scale_name))
            relu = f"{out}_nonneg"
            relu_before[out] = helper.make_node("Relu", [q.input[0]], [relu], name=f"{q.name or out}_relu")
            q.input[0] = relu
        q.input[1], q.input[2] = scale_name, zp_name
        for dq in dqs:
            dq.input[1] = scale_name
            if len(dq.input) > 2:
                dq.input[2] = zp_name
            else:
                dq.input.append(zp_name)
        report["exact" if exact else "requantized"].append(out)
    g.initializer.extend(added)
    used = {i for n in g.node for i in n.input} | {i for q in relu_before.values() for i in q.input} | {o.name for o in g.output}
    orphans = {n.output[0] for n in g.node if n.op_type == "Constant" and n.output[0] not in used}  # the old UINT8 zero points
    if relu_before or orphans:  # keep the graph topologically sorted: each Relu just before its QuantizeLinear
        nodes = []
        for n in g.node:
            if n.op_type == "Constant" and n.output[0] in orphans:
                continue
            if n.op_type == "QuantizeLinear" and n.output[0] in relu_before:
                nodes.append(relu_before[n.output[0]])
            nodes.append(n)
        nodes = [type(n).FromString(n.SerializeToString()) for n in nodes]
        g.ClearField("node")
        g.node.extend(nodes)
    return report


def check_signed(path: Path, onnx_dir: Path, manifest: Manifest, signed: dict[str, list[str]]) -> dict[str, Any]:
    """Record the signed-INT8 rewrite; a requantized graph must still pass its parity check
    (run with ONNX Runtime here, on the artifact's reference texts)."""
    out: dict[str, Any] = {
        "exact": len(signed["exact"]),
        "requantized": len(signed["requantized"]),
        "requantized_tensors": signed["requantized"],
    }
    if not signed["requantized"]:
        out["note"] = "every UINT8 activation became INT8 exactly (codes <= 127)"
        return out
    out["note"] = (
        "non-negative 8-bit activations keep 7 bits on TensorRT (its INT8 is signed): scale x 255/127 after a Relu; "
        "checked against the reference with ONNX Runtime here"
    )
    if not is_installed("onnxruntime"):
        out["parity_onnxruntime"] = "not checked: onnxruntime is not installed here"
        return out
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed, reference = parity.load_reference(onnx_dir / parity.REFERENCE)
    name = manifest.outputs[0].name
    actual = parity.run_chunked(lambda f: sess.run([name], f)[0], feed, 8)
    report = parity.compare(
        reference,
        actual,
        task=manifest.source.task,
        output=name,
        tolerance=REQUANTIZED,
        runtime=f"onnxruntime {ort.__version__} running the signed-INT8 graph built for TensorRT",
    )
    try:
        parity.enforce(report)
    except ParityError as err:
        raise TargetError(
            f"{FOR}: with signed INT8 (TensorRT has no UINT8) the graph no longer matches its reference: {err.message}",
            hint="this scheme's non-negative 8-bit activations need UINT8; use a scheme with binary or signed activations, or precision fp16 on a float export",
        ) from err
    out["parity_onnxruntime"] = report.model_dump()
    return out

"""Budgets of a build: each artifact's figures against the recipe's limits.

A budget is ``passed``, ``failed`` or ``unchecked`` (with the reason: the artifact does not
run here, this machine is not the device a latency budget names, the deliverable is
finished on the device). ``edgekit build`` exits with code 3 when one fails.
"""

from __future__ import annotations

from typing import Any

from edgekit.build.recipe import Budgets

# What is and is not byte-reproducible (tests/build/test_build.py checks the ONNX files).
REPRODUCIBILITY = {
    "byte_identical": [
        "ONNX exports (torch.onnx, TorchScript exporter)",
        "ort-cpu optimized ONNX",
        "parity references",
        "OpenVINO IR (.xml/.bin) when converted in a fresh process in the same order",
    ],
    "not_byte_identical": {
        "ort-mobile .ort": "ONNX Runtime's ORT-format writer orders its kernel/op tables differently from run to run; the graph is the same",
        "OpenVINO IR node names": "auto-generated names come from a process-wide counter, so a second conversion in one process gets other names",
        "manifest.json": "records creation times",
        "QAT checkpoints": "bit-identical only on the same hardware, thread count and torch build (floating-point reduction order)",
    },
}


def _budget(
    target: str,
    budget: str,
    limit: float,
    value: float | None,
    unit: str,
    *,
    higher_fails: bool = True,
    reason: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    if value is None:
        status = "unchecked"
    else:
        status = "failed" if (value > limit + 1e-9 if higher_fails else value < limit - 1e-9) else "passed"
    return {
        "target": target,
        "budget": budget,
        "limit": limit,
        "value": value,
        "unit": unit,
        "status": status,
        "reason": reason if value is None else None,
        "detail": detail,
    }


def check_budgets(b: Budgets, target: str, entry: dict[str, Any], not_here: str | None) -> list[dict[str, Any]]:
    """Each budget against one artifact's figures: passed, failed or unchecked (with why)."""
    from edgekit.deploy import devices, targets

    results = []
    acc = entry.get("accuracy")
    if b.max_accuracy_drop is not None:
        if acc is not None:
            results.append(
                _budget(
                    target,
                    "max_accuracy_drop",
                    b.max_accuracy_drop,
                    acc["drop_points"],
                    "points",
                    detail=f"{acc['metric']} {acc['value']:.4f} vs FP32 {acc['baseline']:.4f} on {acc['data']}",
                )
            )
        else:
            results.append(
                _budget(
                    target,
                    "max_accuracy_drop",
                    b.max_accuracy_drop,
                    None,
                    "points",
                    reason=f"not evaluated: {not_here or 'no eval'}; evaluate it on the device (edgekit eval)",
                )
            )
    for device, ms in b.max_p50_ms.items():
        profile = devices.get(device)
        if target not in profile.targets:
            continue  # this device does not run this target: the budget is not about it
        usable, why = targets.usable_here(profile)
        lat = entry.get("latency")
        if not usable:
            results.append(
                _budget(target, f"max_p50_ms[{device}]", ms, None, "ms", reason=f"this machine is not a {device} ({why}); profile it there")
            )
        elif lat is None:
            results.append(
                _budget(target, f"max_p50_ms[{device}]", ms, None, "ms", reason=f"not profiled: {not_here or 'profiling is off'}")
            )
        else:
            results.append(
                _budget(
                    target,
                    f"max_p50_ms[{device}]",
                    ms,
                    lat["p50_ms"],
                    "ms",
                    detail=f"batch 1, {lat['seq_len']} tokens, model only, on {lat['host']}",
                )
            )
    if b.max_size_mb is not None:
        if entry.get("pending"):
            results.append(
                _budget(
                    target,
                    "max_size_mb",
                    b.max_size_mb,
                    None,
                    "MB",
                    reason=f"the deliverable is finished on the device ({entry['pending']})",
                )
            )
        else:
            results.append(
                _budget(
                    target,
                    "max_size_mb",
                    b.max_size_mb,
                    round(entry["model_bytes"] / 1e6, 3),
                    "MB",
                    detail=f"model files of {entry['path']}",
                )
            )
    return results

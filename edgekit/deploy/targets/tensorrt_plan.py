"""Build plans for the ``jetson`` target, made without TensorRT.

Everything here runs on any machine: the optimization profile (min/opt/max shapes per
input), the check of an ONNX graph against the TensorRT ONNX parser's support table and
the DLA layer table (both kept as data in ``edgekit/data``), the ``trtexec`` command line
and the scripts that build the engine on the device. ``tensorrt.py`` uses the same plan
when TensorRT is importable and builds the engine itself.
"""

from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from edgekit.deploy import data
from edgekit.deploy.targets.shapes import pad_to

OPS_TABLE = "tensorrt_onnx_ops.json"
DLA_TABLE = "tensorrt_dla_layers.json"
ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
FP16_ONNX = "model.fp16.onnx"
BUILD_SH = "build_engine.sh"
BUILD_PY = "build_engine.py"
TRTEXEC_DEFAULT = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs it
ONNX_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
NOT_LAYERS = ("Constant", "Identity")  # no TensorRT layer of their own: not reported for DLA
# onnx.TensorProto data types -> the names the support table uses.
ONNX_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    16: "BF16",
    17: "FP8",
    22: "INT4",
    23: "FP4",
}


@cache
def ops_table() -> dict[str, Any]:
    return json.loads(data.shipped(OPS_TABLE).read_text())


@cache
def dla_table() -> dict[str, Any]:
    return json.loads(data.shipped(DLA_TABLE).read_text())


# ---------------------------------------------------------------- shapes


def round_up(n: int, multiple: int = 8) -> int:
    return int(math.ceil(n / multiple) * multiple)


@dataclass(frozen=True)
class SeqRange:
    min: int
    opt: int
    max: int
    source: str


def seq_range(max_length: int, *, seq_lens: list[int] | None = None, lengths: list[int] | None = None, source: str = "") -> SeqRange:
    """Sequence lengths the engine is built for.

    ``seq_lens``: lengths the user will run (min, median, max of them). ``lengths``: token
    counts of the user's texts, whose histogram gives min = shortest, opt = median rounded
    up to a multiple of 8, max = longest rounded up to a multiple of 8, capped by the
    model's ``max_length``. Neither: 1 .. max_length, opt 128 (or max_length if shorter).
    """
    if seq_lens:
        lo, hi = min(seq_lens), max(seq_lens)
        return SeqRange(lo, max(lo, min(hi, round_up(int(np.median(seq_lens))))), hi, f"seq_lens {sorted(set(seq_lens))}")
    if lengths:
        arr = np.asarray(lengths)
        lo = int(arr.min())
        hi = min(max_length, round_up(int(arr.max())))
        p50, p90 = (int(np.ceil(np.percentile(arr, q))) for q in (50, 90))
        opt = max(lo, min(hi, round_up(p50)))
        return SeqRange(lo, opt, hi, f"{source}: {len(arr)} texts, tokens min {lo} p50 {p50} p90 {p90} max {int(arr.max())}")
    return SeqRange(1, min(128, max_length), max_length, f"default: 1 .. max_length {max_length}")


def profile_shapes(
    input_names: list[str], static_shape: list[int] | None, seq: SeqRange, *, opt_batch: int, max_batch: int
) -> dict[str, dict[str, list[int]]]:
    """{input: {"min": [batch, seq], "opt": [...], "max": [...]}} for every input."""
    if static_shape:
        b, s = static_shape
        one = {"min": [b, s], "opt": [b, s], "max": [b, s]}
    else:
        one = {"min": [1, seq.min], "opt": [opt_batch, seq.opt], "max": [max_batch, seq.max]}
    return {name: {k: list(v) for k, v in one.items()} for name in input_names}


def is_static(shapes: dict[str, dict[str, list[int]]]) -> bool:
    return all(s["min"] == s["opt"] == s["max"] for s in shapes.values())


def pin(shapes: dict[str, dict[str, list[int]]], batch: int) -> dict[str, dict[str, list[int]]]:
    """One shape for every input: ``batch`` rows of the longest sequence (DLA builds)."""
    return {name: {k: [batch, s["max"][1]] for k in ("min", "opt", "max")} for name, s in shapes.items()}


# ---------------------------------------------------------------- graph check


@dataclass
class Check:
    """What the TensorRT ONNX parser (and DLA) would make of a graph."""

    failures: list[str] = field(default_factory=list)  # the build would fail
    unsupported: dict[str, int] = field(default_factory=dict)  # op -> nodes, not importable
    type_warnings: list[str] = field(default_factory=list)
    restrictions: dict[str, str] = field(default_factory=dict)  # op in the graph -> the table's restriction
    dla_gpu_fallback: dict[str, int] | None = None  # op -> nodes that run on the GPU, not the DLA
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        table = ops_table()
        return {
            "table": f"{table['source']['repository']} {table['source']['path']} (TensorRT {table['tensorrt']}, opset {table['opset'][0]}-{table['opset'][1]})",
            "failures": self.failures,
            "unsupported": self.unsupported,
            "type_warnings": self.type_warnings,
            "restrictions": self.restrictions,
            "dla_gpu_fallback": self.dla_gpu_fallback,
            "notes": self.notes,
        }


def _nodes(graph: Any) -> list[Any]:
    """Every node, those of subgraphs (If, Loop, Scan) included."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_nodes(sub))
    return out


def _types(model: Any) -> dict[str, str]:
    """Tensor name -> table type name, from the graph and ONNX shape inference."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown types are not checked
        pass
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    return {k: ONNX_TYPES.get(v, f"type{v}") for k, v in types.items() if v}


def _typed_tensors(node: Any) -> list[str]:
    """The tensors whose type the table's "Supported Types" column is about."""
    if node.op_type in ("Constant", "ConstantOfShape", "RandomNormal", "RandomUniform"):
        return list(node.output[:1])
    if node.op_type in ("Cast", "CastLike"):
        return [node.input[0], node.output[0]]
    if node.op_type == "Where":
        return list(node.input[1:2])
    return [t for t in node.input[:1] if t]


def has_qdq(model: Any) -> bool:
    return any(n.op_type in QDQ_OPS for n in _nodes(model.graph))


def opset(model: Any) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)


def check_graph(model: Any, *, precision: str, trt_major: int, dla: bool = False, gpu_fallback: bool = True) -> Check:
    """Check ``model`` (an onnx.ModelProto) against the support tables; nothing is raised."""
    table, check = ops_table(), Check()
    ops = table["operators"]
    version = opset(model)
    lo, hi = table["opset"]
    if version is not None and not lo <= version <= hi:
        check.failures.append(f"opset {version} is outside the range the TensorRT {table['tensorrt']} ONNX parser imports ({lo}-{hi})")
    types = _types(model)
    nodes = _nodes(model.graph)
    bad_types: Counter[tuple[str, str]] = Counter()
    for node in nodes:
        name = node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}.{node.op_type}"
        row = ops.get(node.op_type) if node.domain in ONNX_DOMAINS else None
        if row is None or not row["supported"]:
            check.unsupported[name] = check.unsupported.get(name, 0) + 1
            continue
        if row["restrictions"]:
            check.restrictions[name] = row["restrictions"]
        for tensor in _typed_tensors(node):
            t = types.get(tensor)
            if t is not None and t not in row["types"] and not (t in table["quantized_types"] and node.op_type in QDQ_OPS):
                bad_types[name, t] += 1
    for name, n in sorted(check.unsupported.items()):
        hint = "a custom-domain operator needs a TensorRT plugin" if "." in name else "not supported by the parser"
        check.failures.append(f"{name} ({n} node{'s' if n > 1 else ''}): {hint}")
    for (name, t), n in sorted(bad_types.items()):
        msg = f"{name} on {t} tensors ({n} node{'s' if n > 1 else ''}): the table lists {', '.join(ops[name.split('.')[-1]]['types'])}"
        check.type_warnings.append(msg + ("; TensorRT casts DOUBLE down to FP32" if t == "DOUBLE" else ""))
    if precision == "int8" and not has_qdq(model):
        check.failures.append(
            "precision int8 needs Q/DQ (QuantizeLinear/DequantizeLinear) nodes in the graph: TensorRT 11 builds strongly typed "
            "networks, whose precision comes from the graph, and TensorRT 10 would need a calibrator (deprecated since 10.1), "
            "which edgekit does not use"
        )
    if trt_major >= 11:
        check.notes.append("TensorRT 11 networks are strongly typed: no precision flags; fp16 is built from an fp16 copy of the graph")
    if dla:
        _check_dla(check, nodes, precision=precision, trt_major=trt_major, gpu_fallback=gpu_fallback)
    return check


def _check_dla(check: Check, nodes: list[Any], *, precision: str, trt_major: int, gpu_fallback: bool) -> None:
    table = dla_table()
    fallback: Counter[str] = Counter()
    for node in nodes:
        if node.op_type in NOT_LAYERS:
            continue
        row = table["operators"].get(node.op_type) if node.domain in ONNX_DOMAINS else None
        if row is None or precision not in row["precisions"]:
            fallback[node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}.{node.op_type}"] += 1
    check.dla_gpu_fallback = dict(sorted(fallback.items()))
    if precision not in table["precisions"]:
        check.failures.append(f"DLA runs {' or '.join(table['precisions'])} only, not {precision}")
    if fallback and not gpu_fallback:
        check.failures.append(f"gpu_fallback is off but {sum(fallback.values())} nodes cannot run on the DLA ({', '.join(fallback)})")
    elif fallback:
        check.notes.append(
            f"{sum(fallback.values())} of {sum(1 for n in nodes if n.op_type not in NOT_LAYERS)} nodes fall back to the GPU (estimate from the DLA layer table; the builder decides per layer)"
        )
    check.notes.append(f"DLA on TensorRT {trt_major}: {table['tensorrt'][str(min(trt_major, 11))]}")
    check.notes.append("DLA takes static shapes only: the optimization profile is pinned to one shape")


# ---------------------------------------------------------------- device build plan


def flags(precision: str, trt_major: int) -> tuple[bool, list[str]]:
    """(strongly typed, TensorRT 10 builder flags) for ``precision``."""
    if trt_major >= 11:
        return True, []
    return False, {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def trtexec_command(
    onnx_file: str,
    shapes: dict[str, dict[str, list[int]]],
    *,
    precision: str,
    trt_major: int,
    dla_core: int | None,
    gpu_fallback: bool,
    workspace_mb: int,
    dynamic: bool,
) -> list[str]:
    """The ``trtexec`` argv that builds the same engine (run in the artifact directory)."""
    cmd = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={ENGINE_FILE}",
        f"--timingCacheFile={TIMING_CACHE}",
        f"--memPoolSize=workspace:{workspace_mb}M",
    ]
    if dynamic:
        for key in ("min", "opt", "max"):
            cmd.append(f"--{key}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, s[key]))}" for name, s in shapes.items()))
    strongly_typed, builder_flags = flags(precision, trt_major)
    cmd += ["--stronglyTyped"] if strongly_typed else [f"--{f.lower()}" for f in builder_flags]
    if dla_core is not None:
        cmd.append(f"--useDLACore={dla_core}")
        if gpu_fallback:
            cmd.append("--allowGPUFallback")
    cmd.append("--skipInference")
    return cmd


def build_script(cmd: list[str], *, trt_major: int, edgekit_version: str) -> str:
    """``build_engine.sh``: trtexec on the device, then edgekit records the engine if present."""
    args = " \\\n    ".join(shlex.quote(a) for a in cmd[1:])
    return f"""#!/usr/bin/env bash
# Builds model.engine for this artifact on the Jetson itself (TensorRT {trt_major}.x), with
# trtexec. Written by edgekit {edgekit_version}, target jetson. Engines are specific to the
# TensorRT version and GPU they are built with: build on the device that runs them.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo {TRTEXEC_DEFAULT})}}"
"$TRTEXEC" \\
    {args}
if python3 -c 'import edgekit' 2>/dev/null; then
    # Record the engine in the manifest and check it against PyTorch's outputs.
    python3 {BUILD_PY} --adopt
else
    echo "built {ENGINE_FILE}; install edgekit here and run 'python3 {BUILD_PY} --adopt' to record it in manifest.json" >&2
fi
"""


BUILD_PY_TEXT = f'''"""Builds model.engine for this artifact with edgekit's TensorRT builder, on the device.

    python3 {BUILD_PY}            # build with the TensorRT Python API, then check parity
    python3 {BUILD_PY} --adopt    # record an engine {BUILD_SH} built with trtexec
"""
import sys
from pathlib import Path

from edgekit.deploy.targets.tensorrt_device import main

sys.exit(main([str(Path(__file__).resolve().parent), *sys.argv[1:]]))
'''


# ---------------------------------------------------------------- parity on the device


def uncovered(feed: dict[str, np.ndarray], shapes: dict[str, dict[str, list[int]]]) -> str | None:
    """Why compile's parity run (every reference text, as exported) would not fit the profile; None if it fits."""
    first = next(iter(shapes.values()))
    (b_min, s_min), (b_max, s_max) = first["min"], first["max"]
    rows, width = next(iter(feed.values())).shape
    if not s_min <= width <= s_max:
        return f"the parity texts are {width} tokens wide and the profile takes {s_min}-{s_max}: {BUILD_PY} checks parity on the texts that fit"
    if b_min == b_max and rows % b_max:
        return f"{rows} parity texts do not split into batches of {b_max}: {BUILD_PY} checks parity on whole batches"
    return None


def fit_reference(
    feed: dict[str, np.ndarray], reference: np.ndarray, shapes: dict[str, dict[str, list[int]]], pad_id: int
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """The parity texts an engine's profile can take: (feed, reference rows, batch).

    Rows longer than the profile's longest sequence are left out; columns are cut (or,
    below the shortest, padded) to fit, which changes nothing but padding because the
    attention mask covers it.
    """
    first = next(iter(shapes.values()))
    (b_min, s_min), (b_max, s_max) = first["min"], first["max"]
    width = next(iter(feed.values())).shape[1]
    lengths = feed["attention_mask"].sum(axis=1) if "attention_mask" in feed else np.full(len(reference), width)
    keep = lengths <= s_max
    target = s_max if s_min == s_max else max(s_min, min(width, s_max))
    out = pad_to({name: arr[keep] for name, arr in feed.items()}, target, pad_id)
    reference = reference[keep]
    if b_min != b_max or not len(reference):
        return out, reference, min(8, b_max)
    # A static batch: whole batches only (repeat rows if fewer than one batch are left).
    n = len(reference) // b_max * b_max
    index = np.arange(n) if n else np.resize(np.arange(len(reference)), b_max)
    return {k: v[index] for k, v in out.items()}, reference[index], b_max

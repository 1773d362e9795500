"""bench/ov_fq_hoist: openvino-cpu on a lowered graph, before and after one of its FakeQuantize rewrites.

``--step hoist`` (default): ``before`` is the IR ``ov.convert_model`` makes of the lowered ONNX graph,
``after`` the same through :func:`edgekit.deploy.targets.openvino_fq.hoist_fake_quantize` (quantizers moved
above Reshape/Transpose). ``--step unsigned``: ``before`` is the hoisted IR, ``after`` the same through
:func:`edgekit.deploy.targets.openvino_fq.unsign_fake_quantize` (the int8 matmuls' activations on the u8
grid), as the target compiles it now. Both compiled on the CPU plugin with the target's default config (f32, LATENCY).

Reports, per graph: the standalone ``FakeQuantize`` nodes of the runtime model (by what feeds them), their
PERF_COUNT time, and wall p50 with the two graphs interleaved round by round (order reversed every other
round) in one process; shapes as bench/op_profile.py (b1 real length, b1 s128, b32 s128). The outputs of
the two graphs are compared on every feed. On a shared machine only the same-run ratios count.

The lowered model: bench/op_profile.py's (4 QAT steps of ternary-w2e2a8 on all-MiniLM-L6-v2, built there
and cached in bench/work/op-profile), or ``--lowered DIR``.

Run:  python bench/ov_fq_hoist.py [--step hoist|unsigned] [--rounds 20] [--threads N]
Writes bench/results/ov-fq-hoist/ (or ov-fq-unsigned/<lowered model>/) ov_fq_hoist.json and README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import op_profile

from edgekit.deploy import artifact, packing
from edgekit.deploy.targets.openvino import OpenVinoOptions, runtime_config
from edgekit.deploy.targets.openvino_fq import hoist_fake_quantize, unsign_fake_quantize

ROOT = Path(__file__).resolve().parent
TYPES = ("FakeQuantize", "Subgraph", "FullyConnected", "FullyConnectedQuantizedLegacy", "Transpose")  # PERF_COUNT ms in the README
STEPS = {
    "hoist": ("ov-fq-hoist", "FakeQuantize moved above Reshape/Transpose", "`ov.convert_model`", "`hoist_fake_quantize`"),
    "unsigned": (
        "ov-fq-unsigned",
        "int8 matmul activations on the u8 grid",
        "`ov.convert_model` + `hoist_fake_quantize`",
        "`unsign_fake_quantize`",
    ),
}


def models(lowered: Path, step: str) -> tuple[Any, Any, int]:
    """(before, after, changes): the lowered graph's IR before ``step`` and after it."""
    import openvino as ov

    manifest = artifact.read_manifest(lowered)
    with packing.unpacked_dir(lowered, manifest) as src:
        before = ov.convert_model(str(src / manifest.model_file))
    if step == "unsigned":
        hoist_fake_quantize(before)
    after = before.clone()
    return before, after, (hoist_fake_quantize if step == "hoist" else unsign_fake_quantize)(after)


def standalone_fq(compiled: Any) -> collections.Counter[str]:
    """Standalone FakeQuantize nodes of a runtime model, counted by the type of the node feeding them."""

    def rt(op: Any, key: str) -> str:
        info = op.get_rt_info()
        return info[key].astype(str) if key in info else op.get_type_name()

    out: collections.Counter[str] = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        if rt(op, "layerType") == "FakeQuantize":
            out[f"after {rt(op.input_value(0).get_node(), 'layerType')}"] += 1
    return out


def op_ms(compiled: Any, feeds: list[dict[str, np.ndarray]], runs: int) -> dict[str, float]:
    """PERF_COUNT ms per call by node type (after one warm-up call per feed)."""
    request = compiled.create_infer_request()
    by_type: collections.Counter[str] = collections.Counter()
    for feed in feeds:
        request.infer(feed)
        for _ in range(runs):
            request.infer(feed)
            for p in request.get_profiling_info():
                by_type[p.node_type] += p.real_time.total_seconds() * 1e3 / (runs * len(feeds))
    return dict(by_type)


def interleaved(requests: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int) -> dict[str, float]:
    """p50 ms per call of each infer request, round by round (op_profile's timing)."""
    return op_profile.wall_p50({name: r.infer for name, r in requests.items()}, feeds, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "op-profile")
    ap.add_argument("--lowered", type=Path, default=None, help="a lowered ONNX artifact (default: op_profile's, built if missing)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (b32 s128: half)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--step", choices=sorted(STEPS), default="hoist", help="the rewrite measured")
    args = ap.parse_args()
    import openvino as ov

    lowered = args.lowered
    if lowered is None:
        op_profile.build(args.work, None)  # cached after the first run
        lowered = args.work / "lowered"
    before, after, moves = models(lowered, args.step)
    config = runtime_config(OpenVinoOptions(threads=args.threads))
    core = ov.Core()
    graphs = {"before": before, "after": after}
    compiled = {n: core.compile_model(m, "CPU", config) for n, m in graphs.items()}
    requests = {n: c.create_infer_request() for n, c in compiled.items()}
    feeds = op_profile.shape_feeds(lowered)
    names = [p.get_any_name() for p in before.inputs]
    feeds = {s: [{k: f[k] for k in names} for f in fs] for s, fs in feeds.items()}
    diff, cosine = 0.0, 1.0
    for f in (f for fs in feeds.values() for f in fs):
        b, a = (np.array(requests[n].infer(f)[compiled[n].outputs[0]]) for n in ("before", "after"))
        diff = max(diff, float(np.abs(b - a).max()))
        cos = (b * a).sum(-1) / (np.linalg.norm(b, axis=-1) * np.linalg.norm(a, axis=-1))
        cosine = min(cosine, float(cos.min()))
    results: dict[str, Any] = {}
    for shape in op_profile.SHAPES:
        op_profile.say(f"time {shape}")
        rounds = args.rounds if shape != "b32 s128" else max(3, args.rounds // 2)
        wall = interleaved(requests, feeds[shape], rounds)
        runs = 5 if shape != "b32 s128" else 3
        # fresh profiled sessions per shape: one that ran other shapes before reports too little time
        prof = {n: op_ms(core.compile_model(m, "CPU", config | {"PERF_COUNT": "YES"}), feeds[shape][:8], runs) for n, m in graphs.items()}
        results[shape] = {n: {"wall_p50_ms": wall[n], "op_ms": prof[n]} for n in compiled} | {
            "ratio_after_before": wall["after"] / wall["before"]
        }
    env = {
        "cpu": op_profile.cpu_model(),
        "cores": os.cpu_count(),
        "openvino": ov.get_version(),
        "config": config,
        "lowered": str(args.lowered or "bench/work/op-profile/lowered (4 QAT steps of ternary-w2e2a8 on all-MiniLM-L6-v2)"),
        "load": round(os.getloadavg()[0], 1),
        "rounds": args.rounds,
        "step": args.step,
        "lowered_arg": str(args.lowered) if args.lowered else None,
    }
    record = {
        "env": env,
        "moves": moves,
        "standalone_fake_quantize": {n: dict(standalone_fq(c)) for n, c in compiled.items()},
        "max_abs_output_diff": diff,
        "min_output_cosine": cosine,
        "results": results,
    }
    out = ROOT / "results" / STEPS[args.step][0]
    if args.step == "unsigned" and args.lowered is not None:  # one folder per lowered model measured
        named = args.lowered.resolve()
        out = out / (named.parent.name.removeprefix("edgekit-") if named.name == "onnx" else named.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ov_fq_hoist.json").write_text(json.dumps(record, indent=1))
    (out / "README.md").write_text("\n".join(readme(record)) + "\n")
    print("\n".join(readme(record)))


def readme(rec: dict[str, Any]) -> list[str]:
    env = rec["env"]
    step = env.get("step", "hoist")
    _, title, before, change = STEPS[step]
    lines = [
        f"# openvino-cpu: {title} ({env['cpu']}, {env['cores']} cores, openvino {env['openvino']})",
        "",
        f"Lowered model: {env['lowered']}; config {env['config']}. `before`: the IR of {before}; `after`: "
        f"the same through {change} ({rec['moves']} changed), as openvino-cpu compiles it. Wall p50: the two "
        f"graphs interleaved in one process, {env['rounds']} rounds (b32 s128: half); load average {env['load']} on "
        f"{env['cores']} cores, so read the ratios. Op ms by node type: PERF_COUNT, separate sessions. "
        f"Outputs of the two graphs over every feed: largest difference {rec['max_abs_output_diff']:.3g}, "
        f"worst-row cosine {rec['min_output_cosine']:.6f}.",
        "",
        "Standalone FakeQuantize nodes in the runtime model (by the node feeding them): "
        + "; ".join(
            f"{n}: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})"
            for n, c in rec["standalone_fake_quantize"].items()
        ),
        "",
        "| shape | wall p50 before (ms) | wall p50 after (ms) | after / before | "
        + " | ".join(f"{t} before | after" for t in TYPES)
        + " | sum of op ms before | after |",
        "|---" * (6 + 2 * len(TYPES)) + "|",
    ]
    for shape, r in rec["results"].items():
        b, a = r["before"], r["after"]
        cells = [f"{g['op_ms'].get(t, 0.0):.3f}" for t in TYPES for g in (b, a)]
        sums = [f"{sum(g['op_ms'].values()):.3f}" for g in (b, a)]
        lines.append(
            f"| {shape} | {b['wall_p50_ms']:.3f} | {a['wall_p50_ms']:.3f} | {r['ratio_after_before']:.3f} | "
            + " | ".join(cells + sums)
            + " |"
        )
    given = f" --lowered {env['lowered_arg']}" if env.get("lowered_arg") else ""
    return [
        *lines,
        "",
        f"Rerun: `python bench/ov_fq_hoist.py --step {step}{given}` (default lowered model is built by bench/op_profile.py's build, cached).",
    ]


if __name__ == "__main__":
    main()

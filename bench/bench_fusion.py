"""Fusion benchmark: ort-cpu with ONNX Runtime's transformer fusions vs the graphs without them.

One run, one process, on the default real model (all-MiniLM-L6-v2), measurements
interleaved round by round so machine drift hits every graph alike. Every graph runs in
the same way: an ONNX Runtime CPU session, optimization level "all", as ort-cpu loads it.

- ``fp32 export``: the exported ONNX graph as it is (baseline);
- ``ort-cpu fusion=off``: the ort-cpu artifact without transformer fusions, its default (baseline);
- ``optimize_model()``: the fused graph a user makes in one call,
  ``onnxruntime.transformers.optimizer.optimize_model(path, model_type="bert")`` with its
  defaults (baseline);
- ``ort-cpu``: the ort-cpu artifact with ``fusion=auto``.

Columns: batch 1 over real texts (the test split of bench/data/debian-sections, shuffled
with a fixed seed, unpadded), batch 1 at 128 tokens, batch 32 at 128 tokens. Speed-ups are
against the best baseline of each column.

The low-bit (lowered binary/ternary) graphs are not measured here: no trained low-bit
checkpoint of this model ships with the repository.

Run:  python bench/bench_fusion.py [--out bench/results/fusion] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

from edgekit.build import plan, runner
from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact
from edgekit.deploy.profile import fixed_length_text
from edgekit.deploy.report import latency_stats
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.ort import session_options

DATA = Path("bench/data/debian-sections/test.jsonl")
BASELINES = ("fp32 export", "ort-cpu fusion=off", "optimize_model()")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(work: Path) -> dict[str, Path]:
    """The four graphs to compare: name -> ONNX file."""
    from onnxruntime.transformers.optimizer import optimize_model

    # what `edgekit compile default -t ort-cpu -o fusion=auto` runs
    runner.run(plan.for_compile("default", work, [("ort-cpu", {"fusion": "auto"})]))
    export_dir = work / "onnx"
    off = work / "ort-cpu-fusion-off"
    if not (off / artifact.MANIFEST).exists():  # the default ort-cpu artifact
        compile_artifact(export_dir, artifact.read_manifest(export_dir), "ort-cpu", off, options={"fusion": "off"})
    user = work / "optimize_model" / "model.onnx"
    user.parent.mkdir(parents=True, exist_ok=True)
    source = export_dir / artifact.read_manifest(export_dir).model_file
    optimize_model(str(source), model_type="bert").save_model_to_file(str(user))
    fused = artifact.read_manifest(work / "ort-cpu")
    print(f"ort-cpu fusions: {json.dumps(fused.settings['fusion'])}", file=sys.stderr)
    return {
        "fp32 export": source,
        "ort-cpu fusion=off": off / artifact.read_manifest(off).model_file,
        "optimize_model()": user,
        "ort-cpu fusion=auto": work / "ort-cpu" / fused.model_file,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/fusion"))
    ap.add_argument("--work", type=Path, default=Path("bench/work/fusion"), help="artifacts (only the summary goes to --out)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement")
    ap.add_argument("--texts", type=int, default=200, help="real texts at batch 1")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    args = ap.parse_args()

    graphs = build(args.work)
    with Predictor(args.work / "ort-cpu") as pred:
        tok = pred.tokenizer
        text128 = fixed_length_text(pred, 128)
    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(texts)
    texts = texts[: args.texts]
    feeds = {
        "b1 real": [tok([t]) for t in texts],
        "b1 s128": [tok([text128], pad_to=128)],
        "b32 s128": [tok([text128] * 32, pad_to=128)],
    }
    sessions = {
        name: ort.InferenceSession(str(path), session_options(ort, "all", args.threads), providers=["CPUExecutionProvider"])
        for name, path in graphs.items()
    }
    inputs = {name: [i.name for i in s.get_inputs()] for name, s in sessions.items()}

    def call(name: str, feed: dict) -> None:
        sessions[name].run(None, {k: feed[k] for k in inputs[name]})

    load_before = os.getloadavg()[0]
    per_round = {"b1 real": len(texts) // args.rounds or 1, "b1 s128": 20, "b32 s128": 3}
    results: dict[str, dict[str, list[float]]] = {b: {k: [] for k in feeds} for b in sessions}
    for name in sessions:  # warm-up
        for fl in feeds.values():
            for f in fl[:3]:
                call(name, f)
    for r in range(args.rounds):
        for key, fl in feeds.items():
            n = per_round[key]
            order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
            for name in order:
                for i in range(n):
                    f = fl[(r * n + i) % len(fl)]
                    t = time.perf_counter()
                    call(name, f)
                    results[name][key].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    table = {}
    for name, res in results.items():
        real, s128 = latency_stats(res["b1 real"]), latency_stats(res["b1 s128"])
        table[name] = {
            "b1_real_mean_ms": real.mean,
            "b1_real_p50_ms": real.p50,
            "b1_s128_p50_ms": s128.p50,
            "b1_s128_p90_ms": s128.p90,
            "b32_s128_seq_per_s": 32 * len(res["b32 s128"]) / sum(res["b32 s128"]),
        }
    best = {
        "b1_real_mean_ms": min(table[b]["b1_real_mean_ms"] for b in BASELINES),
        "b1_s128_p50_ms": min(table[b]["b1_s128_p50_ms"] for b in BASELINES),
        "b32_s128_seq_per_s": max(table[b]["b32_s128_seq_per_s"] for b in BASELINES),
    }
    for row in table.values():
        row["speedup_vs_best_baseline"] = {
            "b1_real": best["b1_real_mean_ms"] / row["b1_real_mean_ms"],
            "b1_s128": best["b1_s128_p50_ms"] / row["b1_s128_p50_ms"],
            "b32_s128": row["b32_s128_seq_per_s"] / best["b32_s128_seq_per_s"],
        }
    tokens = statistics.mean(int(f["attention_mask"].sum()) for f in feeds["b1 real"])
    threads = args.threads or "ORT default"
    head = (
        f"all-MiniLM-L6-v2 (edgekit default), CPU: {cpu_model()} ({platform.machine()}, {len(os.sched_getaffinity(0))} cores usable), "
        f"onnxruntime {ort.__version__}, intra-op threads: {threads}; {args.rounds} interleaved rounds; "
        f"real texts: {len(texts)} of {DATA} (seed 0), mean {tokens:.1f} tokens; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share these cores)"
    )
    lines = [
        head,
        "",
        "| graph | b1 real mean ms | b1 real p50 ms | b1 s128 p50 ms | b1 s128 p90 ms | b32 s128 seq/s | speed-up vs best baseline: b1 real | b1 s128 | b32 s128 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in table.items():
        sp = row["speedup_vs_best_baseline"]
        lines.append(
            f"| {name} | {row['b1_real_mean_ms']:.2f} | {row['b1_real_p50_ms']:.2f} | {row['b1_s128_p50_ms']:.2f} | {row['b1_s128_p90_ms']:.2f} "
            f"| {row['b32_s128_seq_per_s']:.1f} | {sp['b1_real']:.2f}x | {sp['b1_s128']:.2f}x | {sp['b32_s128']:.2f}x |"
        )
    fusion = artifact.read_manifest(args.work / "ort-cpu").settings["fusion"]
    lines += ["", f"ort-cpu fusions applied: {json.dumps(fusion['applied'])}", "Rerun: python bench/bench_fusion.py"]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion.md").write_text("# ort-cpu transformer fusions\n\n" + "\n".join(lines) + "\n")
    (args.out / "fusion.json").write_text(
        json.dumps(
            {
                "cpu": cpu_model(),
                "onnxruntime": ort.__version__,
                "threads": args.threads,
                "rounds": args.rounds,
                "real_texts": len(texts),
                "real_text_mean_tokens": tokens,
                "load_average_before_after": [load_before, os.getloadavg()[0]],
                "fusion": fusion,
                "baselines": list(BASELINES),
                "results": table,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

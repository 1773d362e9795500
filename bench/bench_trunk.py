"""Trunk benchmark: torch eager fp32 vs edgekit's ort-cpu and openvino-cpu artifacts.

One run, one process, on the default real model (all-MiniLM-L6-v2), measurements
interleaved round by round so machine drift hits every backend alike:

- b1 s128: batch 1, 128 real tokens, model-only latency p50 / p90;
- b1 real text: batch 1 over real sentences (Python reference prose, unpadded), mean and p50;
- b32 s128: throughput in sequences/s.

Ratios are speed-ups against torch eager measured in the same run.

Run:  python bench/bench_trunk.py [--out bench/results] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from edgekit.build import plan, runner
from edgekit.build.load import load
from edgekit.deploy import data
from edgekit.deploy.profile import fixed_length_text
from edgekit.deploy.report import latency_stats
from edgekit.deploy.runtime import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement")
    ap.add_argument("--runs", type=int, default=20, help="runs per backend per round (b1)")
    args = ap.parse_args()

    import torch

    work = Path("bench/work/trunk")  # artifacts; only the summary goes to --out
    runner.run(plan.for_compile("default", work, [("ort-cpu", {}), ("openvino-cpu", {})]))  # what `edgekit compile` runs
    dirs = {name: work / name for name in ("ort-cpu", "openvino-cpu")}

    encoder = load("default")
    preds = {name: Predictor(d).__enter__() for name, d in dirs.items()}
    tok = preds["ort-cpu"].tokenizer
    text128 = fixed_length_text(preds["ort-cpu"], 128)
    sentences = data.sample_texts()[::8][:200]

    feeds = {
        "b1 s128": [tok([text128], pad_to=128)],
        "b1 real text": [tok([s]) for s in sentences],
        "b32 s128": [tok([text128] * 32, pad_to=128)],
    }

    def torch_call(feed):
        with torch.inference_mode():
            return encoder.module(*[torch.from_numpy(feed[n]) for n in encoder.spec.input_names])

    backends = {"torch eager fp32": torch_call, **{n: p.run for n, p in preds.items()}}
    results: dict[str, dict[str, list[float]]] = {b: {k: [] for k in feeds} for b in backends}
    for call in backends.values():  # warm-up
        for fl in feeds.values():
            for f in fl[:3]:
                call(f)
    for r in range(args.rounds):
        for key, fl in feeds.items():
            n = 3 if key.startswith("b32") else args.runs
            order = list(backends) if r % 2 == 0 else list(reversed(backends))
            for name in order:
                call = backends[name]
                for i in range(n):
                    f = fl[(r * n + i) % len(fl)]
                    t = time.perf_counter()
                    call(f)
                    results[name][key].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    table = {}
    for name, res in results.items():
        s128 = latency_stats(res["b1 s128"])
        real = latency_stats(res["b1 real text"])
        b32 = 32 * len(res["b32 s128"]) / sum(res["b32 s128"])
        table[name] = {
            "b1_s128_p50_ms": s128.p50,
            "b1_s128_p90_ms": s128.p90,
            "b1_real_mean_ms": real.mean,
            "b1_real_p50_ms": real.p50,
            "b32_s128_seq_per_s": b32,
        }
    base = table["torch eager fp32"]
    mean_tokens = statistics.mean(int(f["attention_mask"].sum()) for f in feeds["b1 real text"])
    print(
        f"\nall-MiniLM-L6-v2, {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; real text mean {mean_tokens:.1f} tokens"
    )
    print(
        f"{'backend':18s} {'b1 s128 p50':>12s} {'p90':>8s} {'b1 real mean':>13s} {'b32 seq/s':>10s} | speed-up vs torch: {'s128':>6s} {'real':>6s} {'b32':>6s}"
    )
    for name, row in table.items():
        print(
            f"{name:18s} {row['b1_s128_p50_ms']:10.2f}ms {row['b1_s128_p90_ms']:6.2f}ms {row['b1_real_mean_ms']:11.2f}ms {row['b32_s128_seq_per_s']:10.1f} |"
            f"                   {base['b1_s128_p50_ms'] / row['b1_s128_p50_ms']:5.2f}x {base['b1_real_mean_ms'] / row['b1_real_mean_ms']:5.2f}x {row['b32_s128_seq_per_s'] / base['b32_s128_seq_per_s']:5.2f}x"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trunk.json").write_text(
        json.dumps({"results": table, "rounds": args.rounds, "real_text_mean_tokens": mean_tokens}, indent=2)
    )
    for p in preds.values():
        p.__exit__(None, None, None)


if __name__ == "__main__":
    main()

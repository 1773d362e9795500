"""Which exit signal separates the texts that can leave early: entropy, the top-two margin or the learned score.

Each policy is scanned at one threshold for every exit, on trained heads (no timing). The scan answers one
question: at the same bound on disagreement with the final exit, how many layers does each policy's threshold
admit, and what does that threshold do on test?

1. Every exit's outputs on an unlabelled sample (the 4,000 held-out corpus texts the heads never saw) and on test.
2. Per policy, the threshold with the fewest mean layers on the sample whose disagreement with the final exit
   stays within ``--budget`` at a one-sided 90 % normal bound. This is a stand-in for calibration's bound, and no
   latency is measured.
3. That threshold applied to test: mean layers and disagreement. An oracle line gives the floor: the first exit
   from which every later exit agrees with the final one.

    python bench/exit_policy_scan.py .ckpt/ww-joint-heads --data bench/data/debian-works-with \
        --sample bench/work/ww/unlabeled-holdout.txt --json bench/results/exits-margin/scan-works-with.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.deploy.exits.policies import normalized_entropy, top_margin

Z90 = 1.2816  # one-sided 90 % normal quantile


def signals(model, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Predictions [E, N] and per-exit signals (larger = more confident) [E, N]."""
    outs = torch_exits(model, model.encoder.tokenize(texts, max_length=128))
    preds = np.stack([o["output"].argmax(-1) for o in outs])
    sig = {
        "entropy": -np.stack([normalized_entropy(o["output"]) for o in outs]),
        "margin": np.stack([top_margin(o["output"]) for o in outs]),
        "learned": np.stack([o["score"] for o in outs]),
    }
    return preds, sig


def simulate(preds: np.ndarray, leave: np.ndarray) -> tuple[float, float]:
    """(mean exit number 1..E, disagreement with the final exit) when rows leave where ``leave[k]`` first holds."""
    n_exits, n = preds.shape
    exit_no, out, done = np.full(n, n_exits), preds[-1].copy(), np.zeros(n, bool)
    for k in range(n_exits - 1):
        go = leave[k] & ~done
        exit_no[go], out[go] = k + 1, preds[k][go]
        done |= go
    return float(exit_no.mean()), float((out != preds[-1]).mean())


def oracle(preds: np.ndarray) -> float:
    """Mean exit number when each row leaves at the first exit from which every later one agrees with the final."""
    stable, first = np.ones(preds.shape[1], bool), np.full(preds.shape[1], preds.shape[0])
    for k in range(preds.shape[0] - 1, -1, -1):
        stable &= preds[k] == preds[-1]
        first = np.where(stable, k + 1, first)
    return float(first.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="a task folder with test.jsonl")
    ap.add_argument("--sample", type=Path, required=True, help="unlabelled texts, one a line")
    ap.add_argument("--budget", type=float, default=1.0, help="disagreement with the final exit, points")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = load_exits(args.heads)
    sample = [line.strip() for line in args.sample.read_text(encoding="utf-8").splitlines() if line.strip()]
    test, _ = texts_and_labels(args.data / "test.jsonl", list(model.encoder.info.labels))
    sp, ss = signals(model, sample)
    tp, ts = signals(model, test)
    doc = {
        "heads": str(args.heads),
        "sample": str(args.sample),
        "sample_texts": len(sample),
        "test_texts": len(test),
        "exits": len(sp),
        "budget_points": args.budget,
        "oracle_test_mean_exit": oracle(tp),
        "policies": {},
    }
    for name, sig in ss.items():
        best = None
        for t in np.unique(np.quantile(sig[:-1], np.linspace(0, 1, 600))):
            layers, dis = simulate(sp, sig[:-1] >= t)
            bound = dis + Z90 * np.sqrt(max(dis, 1e-9) * (1 - dis) / len(sample))
            if bound <= args.budget / 100 and (best is None or layers < best[1]):
                best = (float(t), layers, dis)
        if best is None:
            doc["policies"][name] = None
            continue
        layers, dis = simulate(tp, ts[name][:-1] >= best[0])
        doc["policies"][name] = {
            "threshold": best[0],
            "sample_mean_exit": best[1],
            "sample_disagreement": best[2],
            "test_mean_exit": layers,
            "test_disagreement": dis,
        }
        print(f"{name:8s} sample: exit {best[1]:.2f} (disagreement {best[2]:.4f}) | test: exit {layers:.2f} (disagreement {dis:.4f})")
    print(f"oracle   test: exit {doc['oracle_test_mean_exit']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

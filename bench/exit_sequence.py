"""Recompute calibration's held-out sequence from saved calibrations: which points were tried, in which order, and
which one ended it. (bench/results/exits-ov-buckets; calibration.json records it as ``held_out_sequence`` since then.)

The exit outputs on the labelled dev file are recomputed from the heads; each calibration.json gives its measured
timing (per length bucket), so the runs differ only in what they timed. Defaults as ``exits calibrate``'s (50 %
held out, 90 % bound, 1000 resamples, three-exit subsets, per-exit thresholds).

    python bench/exit_sequence.py HEADS DEV.jsonl CALIBRATION.json [CALIBRATION.json ...] [--max-drop 1]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.operating import HOLDOUT, HeldOut, search
from edgekit.build.exits.segments import torch_exits


def timing_of(doc: dict) -> cal.Timing:
    lb = doc["length_buckets"]
    return cal.Timing(
        [b["up_to"] for b in lb],
        np.cumsum([b["segments_ms"] for b in lb], axis=1),
        np.array([b["no_checks_ms"] for b in lb]),
        np.array([b["single_graph_ms"] for b in lb]),
        [b["latency_texts"] for b in lb],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads")
    ap.add_argument("dev")
    ap.add_argument("calibrations", nargs="+")
    ap.add_argument("--max-drop", type=float, default=1.0)
    a = ap.parse_args()
    model = load_exits(a.heads)
    texts, labels = texts_and_labels(a.dev, list(model.encoder.info.labels), need_labels=True)
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    exits = torch_exits(model, feed)
    lengths, layers = feed["attention_mask"].sum(1), list(model.config.layers)
    for path in a.calibrations:
        timing = timing_of(json.loads(open(path).read()))
        held = HeldOut(
            exits, layers, "classifier", np.asarray(labels), lengths=lengths, timing=timing, holdout=HOLDOUT, confidence=0.9, resamples=1000
        )
        pick, tried = held.choose(search(held.search, None, max_drop=a.max_drop, subsets=3, per_exit=True), a.max_drop)
        print(
            f"{path}: chose {pick.spec if pick else None} {pick.exits if pick else ''} (expected {pick.latency_ratio:.3f}x)"
            if pick
            else f"{path}: none"
        )
        for p, high in tried:
            print(
                f"    {p.spec} exits {p.exits or 'all'}: expected {p.latency_ratio:.3f}x, search bound "
                f"{100 * (held.search.base - p.budget_quality()):.2f}, held-out bound {high:.2f}"
            )


if __name__ == "__main__":
    main()

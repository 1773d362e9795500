"""Calibration's held-out sequence recomputed from saved calibrations, ordered two ways: by mean layers (calibration's
order since bench/results/exits-ov-buckets) and by measured latency (the order before): which points were tried,
which one ended the sequence, which was chosen. calibration.json records calibration's own sequence as
``held_out_sequence``.

The exit outputs on the labelled dev file are recomputed from the heads; each calibration.json gives its measured
timing (per length bucket), so the calibrations differ only in what they timed. Defaults as ``exits calibrate``'s
(50 % held out, 90 % bound, 1000 resamples, three-exit subsets, per-exit thresholds).

    python bench/exit_sequence.py HEADS DEV.jsonl CALIBRATION.json [CALIBRATION.json ...] [--max-drop 1] [--sequence]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.operating import FRONTIER_STEP, HOLDOUT, HeldOut, run_sequence, search
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


def by_latency(held: HeldOut, points: list, max_drop: float):
    """HeldOut.choose as it was before the layer order: the sequence ordered and thinned by expected latency."""
    speed = lambda p: p.expected_latency_ms  # noqa: E731
    passed, tried = run_sequence(held.sequence(points, speed, FRONTIER_STEP * held.search.single_ms), held.drop_high, max_drop)
    return (min(passed, key=speed) if passed else None), tried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads")
    ap.add_argument("dev")
    ap.add_argument("calibrations", nargs="+")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--sequence", action="store_true", help="print every point tried, not only the last")
    a = ap.parse_args()
    model = load_exits(a.heads)
    texts, labels = texts_and_labels(a.dev, list(model.encoder.info.labels), need_labels=True)
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    exits = torch_exits(model, feed)
    lengths, layers = feed["attention_mask"].sum(1), list(model.config.layers)
    ratios: dict[str, list[float]] = {"layers": [], "latency": []}
    for path in a.calibrations:
        timing = timing_of(json.loads(open(path).read()))
        held = HeldOut(
            exits, layers, "classifier", np.asarray(labels), lengths=lengths, timing=timing, holdout=HOLDOUT, confidence=0.9, resamples=1000
        )
        found = search(held.search, None, max_drop=a.max_drop, subsets=3, per_exit=True)
        print(path)
        for order, (pick, tried) in (("layers", held.choose(found, a.max_drop)), ("latency", by_latency(held, found, a.max_drop))):
            last, high = tried[-1]
            end = (
                f"ended at {last.spec} exits {last.exits or 'all'} (held-out bound {high:.2f})" if high > a.max_drop else "every point held"
            )
            chose = f"{pick.spec} exits {pick.exits or 'all'}, expected {pick.latency_ratio:.3f}x" if pick else "nothing"
            print(f"  by {order}: chose {chose}; {len(tried)} points tried, {end}")
            if pick:
                ratios[order].append(pick.latency_ratio)
            for p, h in tried if a.sequence else []:
                print(
                    f"      {p.spec} exits {p.exits or 'all'}: expected {p.latency_ratio:.3f}x, {p.mean_layers:.2f} layers, "
                    f"search bound {100 * (held.search.base - p.budget_quality()):.2f}, held-out bound {h:.2f}"
                )
    for order, r in ratios.items():
        print(f"by {order}: mean expected ratio {np.mean(r):.3f} over {len(r)} calibrations, spread {min(r):.3f}-{max(r):.3f}")


if __name__ == "__main__":
    main()

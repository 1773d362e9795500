"""Does the early-exit budget hold on the deployment distribution? Labelled dev against an unlabelled deployment sample.

A budget chosen on dev holds on test only if dev is a fair sample of what the model will see. When it is
not (a split by source, a label shift: bench/results/exits-joint), a labelled bound on dev cannot know.
What a user always has is *unlabelled* text from deployment, and it is enough for a bound: where an early
exit decides as the final exit does, the two are equally right, so the accuracy an exit policy loses
against the final exit is at most its disagreement with the final exit. `edgekit exits calibrate
--unsupervised --data DEPLOYMENT.txt` bounds that disagreement (90 % bootstrap bound), so the budget is
checked on the deployment distribution itself, at the price of counting every disagreement as a loss.

This script simulates it without touching the test labels it reports on: test.jsonl is split in two by a
seeded shuffle; the first half's texts (labels dropped) are the deployment sample, the second half is the
report. For each split seed it prints the choice of four calibrations and their drop on the report half:
the 90 % bound on labelled dev, the point estimate on labelled dev, the 90 % bound on the unlabelled
deployment half, and the same bound with each disagreement counted by the final exit's probabilities
(temperature-scaled on dev: `exits calibrate --estimate expected --temperature-data dev.jsonl`). With ``--target`` (ort-cpu, openvino-cpu) the segments and the single graph are timed on
that runtime per length bucket, as `exits calibrate --target` does, so each choice is the fastest within
budget and the report half gets its expected latency as a ratio to the single graph; without it, expected
layers only.

    python bench/exit_deploy_sample.py HEADS --data bench/data/debian-sections [--seeds 5] [--max-drop 1]
        [--target ort-cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgekit.build.exits import operating
from edgekit.build.exits.calibrate import Scorer, expected_targets, fit_temperature
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.errors import DataError

UNLABELLED = "deployment-sample bound (unlabelled)"
EXPECTED = "deployment-sample bound, expected drop (unlabelled; temperature on dev)"


def _exits(model, texts):
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    return torch_exits(model, feed), np.asarray(feed["attention_mask"].sum(1))


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of test's deployment half (labels dropped) and report half for one split seed."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def _on_report(report: Scorer, chosen) -> dict:
    p = report.point(chosen.policy, chosen.param, report.keep_of(chosen.exits))
    row = {"test_drop": round(100 * (report.base - p.quality), 2), "test_mean_layers": round(p.mean_layers, 2)}
    if p.latency_ratio is not None:
        row["test_latency_ratio"] = round(p.latency_ratio, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", help="exit-head directory (edgekit exits train)")
    ap.add_argument("--data", type=Path, default=Path("bench/data/debian-sections"), help="folder with dev.jsonl and test.jsonl")
    ap.add_argument("--seeds", type=int, default=5, help="test splits (deployment half / report half)")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--target", help="time the segments and the single graph on this target (ort-cpu, openvino-cpu)")
    ap.add_argument("--latency-texts", type=int, default=100, help="test texts timed per length bucket (with --target)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    model = load_exits(args.heads)
    names, layers, task = list(model.encoder.info.labels), list(model.config.layers), model.task
    dev_texts, dev_labels = texts_and_labels(args.data / "dev.jsonl", names)
    test_texts, test_labels = texts_and_labels(args.data / "test.jsonl", names)
    dev_exits, dev_len = _exits(model, dev_texts)
    test_exits, test_len = _exits(model, test_texts)
    y_dev, y_test = np.asarray(dev_labels), np.asarray(test_labels)
    timing = None
    if args.target:  # latency needs no labels: timed once on the test texts, per length bucket
        import tempfile

        from edgekit.build.exits.dev import measure_target

        with tempfile.TemporaryDirectory() as tmp:
            timing = measure_target(model, test_texts, test_len, args.target, Path(tmp), args.latency_texts)
        print(f"{args.target}: single graph {np.round(timing.single_ms, 3).tolist()} ms per bucket {timing.buckets}")
    common = {"max_drop": args.max_drop, "subsets": 0, "timing": timing}

    def choose(exits, labels, lengths, confidence):
        """The calibrated point, or the one-line refusal (a set too small for the bound, a budget nothing meets)."""
        try:
            return operating.report(exits, layers, task, labels, lengths=lengths, confidence=confidence, **common).chosen
        except DataError as err:
            return err.message

    temperature = fit_temperature(dev_exits[-1]["output"], y_dev)  # for the expected estimate
    print(f"the final exit's temperature on dev: {temperature:.3f}")
    # the dev choices do not depend on the split
    on_dev = {
        "dev bound": choose(dev_exits, y_dev, dev_len, args.confidence),
        "dev point estimate": choose(dev_exits, y_dev, dev_len, None),
    }
    rows = []
    for seed in range(args.seeds):
        deploy, rep = halves(len(test_texts), seed)
        report = Scorer(operating.rows_of(test_exits, rep), layers, task, y_test[rep], lengths=test_len[rep], timing=timing)
        dep = choose(
            operating.rows_of(test_exits, deploy), None, test_len[deploy], args.confidence
        )  # no labels: agreement with the final exit
        # no labels either: each disagreement counted by the final exit's probabilities, scaled on dev (--estimate expected)
        probs = expected_targets(test_exits[-1]["output"][deploy], temperature)
        expect = choose(operating.rows_of(test_exits, deploy), probs, test_len[deploy], args.confidence)
        for name, chosen in [*on_dev.items(), (UNLABELLED, dep), (EXPECTED, expect)]:
            if isinstance(chosen, str):
                rows.append({"seed": seed, "calibration": name, "chosen": f"refused: {chosen}"})
                continue
            row = {"seed": seed, "calibration": name, "chosen": None if chosen is None else f"{chosen.policy}={chosen.param}"}
            if chosen is not None:
                row |= _on_report(report, chosen) | {"calibration_mean_layers": round(chosen.mean_layers, 2)}
                row["held"] = row["test_drop"] <= args.max_drop
            rows.append(row)
    print(
        f"| seed | calibration | chosen | mean layers (calibration) | test drop on the report half | held ({args.max_drop:g} pt) | "
        "mean layers (report) | expected latency vs single graph (report) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['calibration']} | {r['chosen']} | {r.get('calibration_mean_layers', '-')} | {r.get('test_drop', '-')} | "
            f"{r.get('held', '-')} | {r.get('test_mean_layers', '-')} | {r.get('test_latency_ratio', '-')} |"
        )
    for name in [*on_dev, UNLABELLED, EXPECTED]:
        mine = [r for r in rows if r["calibration"] == name and "held" in r]
        if mine:
            print(
                f"- {name}: held on {sum(r['held'] for r in mine)} of {len(mine)} report halves; "
                f"mean test drop {np.mean([r['test_drop'] for r in mine]):.2f}, mean layers {np.mean([r['test_mean_layers'] for r in mine]):.2f}"
                + (f", expected latency {np.mean([r['test_latency_ratio'] for r in mine]):.3f}x the single graph" if timing else "")
            )
    if args.json:
        args.json.write_text(
            json.dumps({"heads": str(args.heads), "data": str(args.data), "target": args.target, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()

"""How often does a calibrated early-exit budget hold on rows it was not chosen on? Measured on dev alone.

A calibration promises that its chosen point stays within ``--max-drop`` at the bound's confidence (90 %:
overshooting on at most about one fresh sample in ten). This script checks that promise without touching
any test set: dev.jsonl is split in two by source group (``--groups``, whole groups on one side, seeded),
each way of choosing calibrates on one half, and the chosen point (deployed with its length plan) is scored
on the other half. Over ``--splits`` splits it prints, per way of choosing, how often the drop on the
unseen half exceeded the budget, the mean and 90th-percentile drop there, and the mean layers run there.

Ways of choosing (``edgekit.build.exits.operating.report``):

- same rows: the search and the bound on the same rows (``holdout`` 0), row or group bootstrap, 90 or 99 %;
- held out: the search on one part, the fixed-sequence check on the held-out rest (``holdout`` 0.5, the
  default), row or group bootstrap.

No latency is measured (the speed of a point is its mean layers), so the numbers are about the budget,
not the saving.

    python bench/exit_coverage.py HEADS --data bench/data/debian-sections [--groups source] [--splits 40]
        [--max-drop 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edgekit.build.exits import operating
from edgekit.build.exits.calibrate import Scorer
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.deploy.data import read_field
from edgekit.errors import EdgekitError

WAYS = {
    "same rows, 90% row bound": dict(holdout=0, groups=False, confidence=0.9),
    "same rows, 99% row bound": dict(holdout=0, groups=False, confidence=0.99),
    "same rows, 90% group bound": dict(holdout=0, groups=True, confidence=0.9),
    "held out, 90% row bound": dict(holdout=0.5, groups=False, confidence=0.9),
    "held out, 90% group bound": dict(holdout=0.5, groups=True, confidence=0.9),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="task folder with dev.jsonl")
    ap.add_argument("--groups", default="source", help="dev field naming each row's source group")
    ap.add_argument("--splits", type=int, default=40)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    model = load_exits(a.heads)
    dev = a.data / "dev.jsonl"
    texts, labels = texts_and_labels(dev, list(model.encoder.info.labels or []), need_labels=True, retrieval=False)
    labels = np.asarray(labels)
    groups = np.asarray(read_field(dev, a.groups), dtype=str)
    model_files = [f for f in a.heads.rglob("*") if f.is_file() and "calibration" not in f.relative_to(a.heads).parts]
    stamp = max(f.stat().st_mtime_ns for f in [dev, *model_files])  # heads or dev changed (not a calibration): a new key
    key = f"{a.heads.resolve()}:{dev.resolve()}:{stamp}"
    cache = Path("bench/work/exit-coverage") / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".npz")
    if cache.exists():  # the exit outputs of these heads on this dev file, from an earlier run
        z = np.load(cache)
        exits = [{k[len(f"e{j}_") :]: z[k] for k in z.files if k.startswith(f"e{j}_")} for j in range(len(model.config.layers))]
        lengths = z["lengths"]
    else:
        feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
        exits, lengths = torch_exits(model, feed), np.asarray(feed["attention_mask"].sum(1))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, lengths=lengths, **{f"e{j}_{k}": v for j, e in enumerate(exits) for k, v in e.items()})
    layers = list(model.config.layers)
    names = np.unique(groups)

    results: dict[str, list[tuple[float, float, float]]] = {w: [] for w in WAYS}  # (drop, layers, chose a point)
    refused = dict.fromkeys(WAYS, 0)
    for seed in range(a.splits):
        half = np.isin(groups, np.random.default_rng(1000 + seed).choice(names, len(names) // 2, replace=False))
        pick, unseen = np.flatnonzero(half), np.flatnonzero(~half)
        other = Scorer(operating.rows_of(exits, unseen), layers, "classifier", labels[unseen], lengths=lengths[unseen])
        for way, o in WAYS.items():
            try:
                r = operating.report(
                    operating.rows_of(exits, pick),
                    layers,
                    "classifier",
                    labels[pick],
                    lengths=lengths[pick],
                    max_drop=a.max_drop,
                    confidence=o["confidence"],
                    groups=groups[pick] if o["groups"] else None,
                    holdout=o["holdout"],
                )
                c = r.chosen
            except EdgekitError:
                c = None
                refused[way] += 1
            if c is None:  # no exits: the model as it is
                results[way].append((0.0, float(layers[-1]), 0.0))
                continue
            p = other.point(c.policy, c.param, other.keep_of(c.exits))
            results[way].append((100 * (other.base - p.quality), p.mean_layers, 1.0))
        print(f"split {seed + 1}/{a.splits}", file=sys.stderr)

    rows = []
    for way, v in results.items():
        d = np.asarray(v)
        over = d[:, 0] > a.max_drop + 1e-9
        rows.append(
            {
                "way": way,
                "chose": int(d[:, 2].sum()),  # halves where a point was chosen (else refused, or no point saved time)
                "overshot": int(over.sum()),
                "overshoot": float(np.mean(over)),
                "mean_drop": float(d[:, 0].mean()),
                "p90_drop": float(np.quantile(d[:, 0], 0.9)),
                "mean_layers": float(d[:, 1].mean()),
                "refused": refused[way],
            }
        )
    head = (
        f"# Early-exit budget coverage on dev halves: {a.heads} on {dev} ({len(texts)} texts, {len(names)} {a.groups} groups), "
        f"{a.splits} splits by group, budget {a.max_drop:g} pt"
    )
    lines = [
        head,
        "",
        "| way of choosing | chose a point | overshot the budget on the unseen half | refused | mean drop (pt) | p90 drop (pt) | mean layers |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['way']} | {r['chose']} | {r['overshot']} | {r['refused']} | {r['mean_drop']:.2f} | {r['p90_drop']:.2f} | {r['mean_layers']:.2f} |"
        for r in rows
    ]
    print("\n".join(lines))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"heads": str(a.heads), "data": str(dev), "splits": a.splits, "rows": rows}, indent=1) + "\n")
        a.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

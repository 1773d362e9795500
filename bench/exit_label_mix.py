"""The drop of one exit threshold per label, on dev and test, and dev's drop reweighted to test's label mix.

Why a budget chosen on dev can miss on test: when the two splits mix the labels differently (a label
shift), the drop moves with the mix. This prints, for every entropy threshold (one for every exit,
every exit checked), the dev drop, the worst label's dev drop, the test drop and the dev drop with
each label weighted by its share of test (bench/results/exits-joint/sections-groups-cpu/per-label.md).

    python bench/exit_label_mix.py HEADS [--data bench/data/debian-sections]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgekit.build.exits.calibrate import Scorer
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.deploy.exits.policies import EXIT_POLICIES


def per_label_drop(scorer: Scorer, rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Points lost by each label's rows (0 for a label with no rows)."""
    return np.array(
        [100 * (scorer.base_rows[labels == k].mean() - rows[labels == k].mean()) if (labels == k).any() else 0.0 for k in range(n_labels)]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", help="exit-head directory (edgekit exits train)")
    ap.add_argument("--data", type=Path, default=Path("bench/data/debian-sections"), help="folder with dev.jsonl and test.jsonl")
    args = ap.parse_args()
    model = load_exits(args.heads)
    names = list(model.encoder.info.labels)
    layers = list(model.config.layers)
    split = {}
    for name in ("dev", "test"):
        texts, labels = texts_and_labels(args.data / f"{name}.jsonl", names)
        exits = torch_exits(model, model.encoder.tokenize(texts, max_length=model.encoder.info.max_length))
        split[name] = (Scorer(exits, layers, "classifier", np.asarray(labels)), np.asarray(labels))
    (dev, y_dev), (test, y_test) = split["dev"], split["test"]
    test_mix = np.bincount(y_test, minlength=len(names)) / len(y_test)
    print("| entropy | dev drop | worst label on dev | test drop | dev drop at test's label mix | mean layers (test) |")
    print("|---|---|---|---|---|---|")
    for value in EXIT_POLICIES["entropy"].grid:
        per = per_label_drop(dev, dev.rows("entropy", value, None), y_dev, len(names))
        worst = int(per.argmax())
        d, t = dev.point("entropy", value), test.point("entropy", value)
        print(
            f"| {value} | {100 * (dev.base - d.quality):.2f} | {per[worst]:.2f} ({names[worst]}) | {100 * (test.base - t.quality):.2f} | "
            f"{float(per @ test_mix):.2f} | {t.mean_layers:.2f} |"
        )


if __name__ == "__main__":
    main()

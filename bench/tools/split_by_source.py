"""Split a labelled JSONL file into two halves by source package, for cross-fitted "deployment text" studies.

The texts of one half, labels dropped, stand for the unlabelled text a user has from where the model will run;
the other half is reported. Rows of one source package (e.g. 117 `freedict-wikdict` rows in debian-sections test)
are near-duplicates, so the split is by the ``source`` field: no package has rows on both sides. Sources are
shuffled with ``--seed`` and each goes to the half with fewer rows so far, so the halves are about equal.

Writes OUT/half-a.jsonl and OUT/half-b.jsonl (the rows, labels kept for reporting) and OUT/half-a.txt and
OUT/half-b.txt (the texts only, each written ``--repeat`` times, to give them weight beside a larger corpus).

    python bench/tools/split_by_source.py bench/data/debian-sections/test.jsonl OUT --seed 0 --repeat 8
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_source: dict[str, list[dict]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_source[row.get("source") or f"row-{i}"].append(row)
    sources = sorted(by_source)
    random.Random(args.seed).shuffle(sources)
    halves: dict[str, list[dict]] = {"a": [], "b": []}
    for source in sources:
        side = "a" if len(halves["a"]) <= len(halves["b"]) else "b"
        halves[side].extend(by_source[source])
    args.out.mkdir(parents=True, exist_ok=True)
    for side, part in halves.items():
        (args.out / f"half-{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        texts = "".join(" ".join(r["text"].split()) + "\n" for r in part)
        (args.out / f"half-{side}.txt").write_text(texts * args.repeat, encoding="utf-8")
    print(f"{args.data}: {len(rows)} rows, {len(sources)} sources -> half a {len(halves['a'])} rows, half b {len(halves['b'])}")


if __name__ == "__main__":
    main()

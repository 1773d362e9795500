"""Split an unlabelled corpus (one text a line, .txt or .txt.xz) into two files by a seeded shuffle.

The corpus is ordered by source package, so a plain head/tail would split by package name: shuffle first.
``--holdout N`` texts go to HOLDOUT, the rest to REST. The same seed gives the same split on any machine.

    python bench/tools/split_corpus.py bench/data/debian-unlabeled/train.txt.xz --holdout 4000 --seed 0 REST HOLDOUT
"""

from __future__ import annotations

import argparse
import lzma
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("rest", type=Path)
    ap.add_argument("holdout_out", type=Path)
    ap.add_argument("--holdout", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    opener = lzma.open if args.corpus.suffix == ".xz" else open
    with opener(args.corpus, "rt", encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    random.Random(args.seed).shuffle(texts)
    n = min(args.holdout, len(texts))
    args.holdout_out.write_text("".join(t + "\n" for t in texts[:n]), encoding="utf-8")
    args.rest.write_text("".join(t + "\n" for t in texts[n:]), encoding="utf-8")
    print(f"{len(texts) - n} texts to {args.rest}, {n} held out to {args.holdout_out}")


if __name__ == "__main__":
    main()

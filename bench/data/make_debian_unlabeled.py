"""An unlabelled in-domain corpus for distillation (``exits train --unlabeled``, ``quantize --unlabeled``).

What a user has beside a small labelled set: more texts of the same kind, without labels. Here: the
Debian bookworm (main, amd64) package descriptions that no labelled task holds, written exactly as the
tasks' texts are (synopsis + first paragraph of the long description, the same package filter), from
source packages on the TRAINING side of every task built from these lists:

- debian-sections splits by sha256(source) mod 10 (0 test, 1 dev);
- debian-works-with and debian-synopsis by sha256(source) mod 20 (0-2 test, 3-5 dev).

A description is kept only where its source package is training-side in both, so no dev or test
package of any task is distilled on, and texts equal to a labelled row of any split are dropped too.
One text per line, shuffled with seed 0, xz-compressed (``debian-unlabeled/train.txt.xz``; the
benches decompress it: ``xz -dkc bench/data/debian-unlabeled/train.txt.xz > corpus.txt``).

    python bench/data/make_debian_unlabeled.py --lists /tmp/aptlists-en
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_debian_works_with import LISTS, MIN_WORDS, SEED, packages, read_index, split_of

HERE = Path(__file__).resolve().parent
OUT = HERE / "debian-unlabeled"
TASKS = ("debian-sections", "debian-works-with", "debian-synopsis")


def sections_split(source: str) -> str:
    """debian-sections' split of a source package (make_debian_sections.py)."""
    h = int(hashlib.sha256(source.encode()).hexdigest(), 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def labelled_texts() -> set[str]:
    """Every text (and query/doc) of every split of the tasks in bench/data."""
    seen = set()
    for task in TASKS:
        for f in (HERE / task).glob("*.jsonl"):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    seen.update(" ".join(row[k].split()) for k in ("text", "query", "doc") if k in row)
    return seen


def corpus(rows: list[dict], labelled: set[str], seed: int = SEED) -> tuple[list[str], dict]:
    """(texts, counts): training-side descriptions of every task, labelled texts dropped, shuffled."""
    side = [r for r in rows if split_of(r["source"]) == "train" and sections_split(r["source"]) == "train"]
    long_enough = [r for r in side if len(r["body"].split()) >= MIN_WORDS]
    texts = [" ".join(f"{r['synopsis']}. {r['body']}".split()) for r in long_enough]
    kept = sorted({t for t in texts if t not in labelled})
    random.Random(seed).shuffle(kept)
    counts = {"described": len(rows), "training_side": len(side), "long_enough": len(long_enough), "kept": len(kept)}
    return kept, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", default=LISTS, help="apt lists folder holding the bookworm main Packages and Translation-en")
    args = ap.parse_args()
    lists = args.lists.rstrip("/") + "/"
    pk = glob.glob(lists + "*_bookworm_main_binary-amd64_Packages*")
    tr = glob.glob(lists + "*_bookworm_main_i18n_Translation-en*")
    if not pk or not tr:
        raise SystemExit(f"{lists}: no bookworm main Packages / Translation-en lists (see make_debian_works_with.py for how to get them)")
    texts, counts = corpus(packages(read_index(pk[0]), read_index(tr[0])), labelled_texts())
    OUT.mkdir(exist_ok=True)
    with lzma.open(OUT / "train.txt.xz", "wt", encoding="utf-8", preset=9) as f:
        f.write("\n".join(texts) + "\n")
    words = sum(len(t.split()) for t in texts)
    (OUT / "README.md").write_text(
        "\n".join(
            [
                "# debian-unlabeled",
                "",
                "In-domain texts without labels, for distillation: built by `bench/data/make_debian_unlabeled.py` (its",
                "docstring says how). Debian bookworm main package descriptions whose source package is on the training side",
                "of debian-sections, debian-works-with and debian-synopsis, labelled texts of any split dropped.",
                "",
                f"- {counts['kept']:,} texts ({words / max(len(texts), 1):.0f} words on average), one per line, shuffled (seed 0): `train.txt.xz`",
                f"- from {counts['described']:,} described packages: {counts['training_side']:,} training-side, "
                f"{counts['long_enough']:,} with a first paragraph of {MIN_WORDS}+ words",
                f"- source lists: `{Path(pk[0]).name}`, `{Path(tr[0]).name}`",
                "",
                "Use: `xz -dkc bench/data/debian-unlabeled/train.txt.xz > /tmp/corpus.txt`, then",
                "`edgekit exits train ... --unlabeled /tmp/corpus.txt` or `edgekit quantize ... --unlabeled /tmp/corpus.txt`.",
                "",
            ]
        )
    )
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

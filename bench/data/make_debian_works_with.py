"""Build two more real tasks offline from Debian's package descriptions.

1. ``debian-works-with`` (text classification): the package's description (synopsis + first
   paragraph of the long description, as in ``debian-sections``) labelled with its debtags
   ``works-with::`` facet (what kind of data the program handles: text, audio, mail, db, ...),
   a human annotation separate from the archive sections. Only packages with exactly one
   works-with value are kept (a value whose parent is also tagged, ``image:raster`` next to
   ``image``, counts as that parent), and only values with at least ``MIN_PER_LABEL`` packages.
2. ``debian-synopsis`` (retrieval): query/doc pairs, the synopsis as the query and the first
   paragraph of the long description as the one relevant doc (``edgekit eval``'s pair format).
   One pair per source package in dev/test; pairs whose doc repeats the query, is too short,
   or duplicates another doc or query are dropped.

Both are split by a hash of the SOURCE package (no source package on two sides): about
70/15/15 (train/dev/test), with the same hash for both tasks, so a source's texts sit on the
same side in each. Rows are shuffled with a fixed seed before any cap.

Needs the bookworm main Packages and Translation-en lists. Without touching the system's lists:
    mkdir -p /tmp/aptlists-en/partial
    apt-get -o Acquire::Languages=en -o Dir::State::Lists=/tmp/aptlists-en update
    python bench/data/make_debian_works_with.py --lists /tmp/aptlists-en
(or ``apt-get -o Acquire::Languages=en update`` as root and no ``--lists``).
Writes bench/data/debian-works-with/{train,dev,test}.jsonl and bench/data/debian-synopsis/{dev,test}.jsonl
(``--synopsis-train`` adds its train.jsonl), each folder with a README.md (counts, source, rebuild).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_debian_sections import SKIP_NAME, first_paragraph, parse_stanzas  # the same package filter and text as debian-sections

HERE = Path(__file__).resolve().parent
WORKS_WITH = HERE / "debian-works-with"
SYNOPSIS = HERE / "debian-synopsis"
LISTS = "/var/lib/apt/lists/"
SEED = 0
MIN_PER_LABEL = 60  # packages with one works-with value, over all splits, before a label is kept
IGNORED_VALUES = ("TODO",)  # debtags' "not yet tagged" marker, not a kind of data
MIN_WORDS = 8  # first paragraph length for a classification text (as debian-sections)
MIN_DOC_WORDS = 10  # first paragraph length for a retrieval doc
SYNOPSIS_CAP = {"dev": 2000, "test": 2000}
SPLITS = ("train", "dev", "test")


# ---- reading the apt lists -------------------------------------------------------------------


def read_index(path: str) -> str:
    """A list file as text, whatever apt compressed it with (apt-helper, else lz4cat for .lz4, else plain)."""
    helper = Path("/usr/lib/apt/apt-helper")
    if helper.exists():
        return subprocess.run([str(helper), "cat-file", path], capture_output=True, text=True, check=True).stdout
    if path.endswith(".lz4"):
        return subprocess.run(["lz4cat", path], capture_output=True, text=True, check=True).stdout
    return Path(path).read_text(encoding="utf-8")


def works_with(tag_field: str) -> list[str]:
    """The package's works-with values from its ``Tag:`` field; a value whose parent is also tagged counts as the parent."""
    tags = [t.strip() for t in tag_field.replace("\n", " ").split(",") if t.strip()]
    values = {t.split("::", 1)[1] for t in tags if t.startswith("works-with::")}
    values -= set(IGNORED_VALUES)
    return sorted(v for v in values if v.split(":", 1)[0] == v or v.split(":", 1)[0] not in values)


def split_of(source: str) -> str:
    """train / dev / test by a hash of the source package name (15 % dev, 15 % test)."""
    h = int(hashlib.sha256(source.encode()).hexdigest(), 16) % 20
    return "test" if h < 3 else "dev" if h < 6 else "train"


def packages(packages_text: str, translation_text: str) -> list[dict]:
    """One record per described binary package: name, source, synopsis, body (first paragraph), works-with values.

    Packages named like libraries/-dev/-doc/-data are skipped, and so is a description shared by
    an earlier package (same Description-md5)."""
    long_desc = {
        (s["Package"], s.get("Description-md5")): s["Description-en"] for s in parse_stanzas(translation_text) if "Description-en" in s
    }
    rows, seen = [], set()
    for s in parse_stanzas(packages_text):
        name = s.get("Package", "")
        if not name or SKIP_NAME.search(name):
            continue
        md5 = s.get("Description-md5")
        long = long_desc.get((name, md5))
        if long is None or md5 in seen:
            continue
        seen.add(md5)
        rows.append(
            {
                "package": name,
                "source": s.get("Source", name).split()[0],
                "synopsis": long.splitlines()[0].strip(),
                "body": first_paragraph(long),
                "works_with": works_with(s.get("Tag", "")),
            }
        )
    return rows


# ---- the two tasks ---------------------------------------------------------------------------


def works_with_task(rows: list[dict], *, min_per_label: int = MIN_PER_LABEL, seed: int = SEED) -> tuple[dict, Counter]:
    """({split: [{"text", "label"}]}, count of every single value before the cut)."""
    single = [r for r in rows if len(r["works_with"]) == 1 and len(r["body"].split()) >= MIN_WORDS]
    counts = Counter(r["works_with"][0] for r in single)
    keep = {v for v, n in counts.items() if n >= min_per_label}
    single = sorted((r for r in single if r["works_with"][0] in keep), key=lambda r: r["package"])
    random.Random(seed).shuffle(single)
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for r in single:
        splits[split_of(r["source"])].append({"text": f"{r['synopsis']}. {r['body']}", "label": r["works_with"][0]})
    return splits, counts


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def synopsis_pairs(rows: list[dict], *, cap: dict[str, int] | None = None, seed: int = SEED) -> tuple[dict, Counter]:
    """({split: [{"query", "doc"}]}, reasons pairs were dropped). dev/test: one pair per source, capped."""
    cap = SYNOPSIS_CAP if cap is None else cap
    dropped: Counter = Counter()
    ordered = sorted(rows, key=lambda r: r["package"])
    random.Random(seed).shuffle(ordered)
    seen_q, seen_d, sources = set(), set(), set()
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for r in ordered:
        q, d = r["synopsis"], r["body"]
        nq, nd = _norm(q), _norm(d)
        split = split_of(r["source"])
        if len(d.split()) < MIN_DOC_WORDS:
            dropped[f"doc under {MIN_DOC_WORDS} words"] += 1
        elif not nq or f" {nq} " in f" {nd} ":
            dropped["doc repeats the query"] += 1
        elif nq in seen_q or nd in seen_d:
            dropped["query or doc already used"] += 1
        elif split != "train" and r["source"] in sources:
            dropped["second package of a dev/test source"] += 1
        elif split in cap and len(splits[split]) >= cap[split]:
            dropped[f"over the {split} cap"] += 1
        else:
            seen_q.add(nq)
            seen_d.add(nd)
            sources.add(r["source"])
            splits[split].append({"query": q, "doc": d})
    return splits, dropped


# ---- writing ---------------------------------------------------------------------------------


def _write(folder: Path, splits: dict[str, list], which=SPLITS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in which:
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for item in splits[split]:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")


REBUILD = [
    "Rebuild (Debian bookworm main amd64 lists with English translations; the system's lists are left alone):",
    "",
    "    mkdir -p /tmp/aptlists-en/partial",
    "    apt-get -o Acquire::Languages=en -o Dir::State::Lists=/tmp/aptlists-en update",
    "    python bench/data/make_debian_works_with.py --lists /tmp/aptlists-en",
]


def works_with_readme(splits: dict[str, list], counts: Counter, min_per_label: int, source: str) -> str:
    per = {s: Counter(x["label"] for x in splits[s]) for s in SPLITS}
    labels = sorted(per["train"] | per["dev"] | per["test"], key=lambda v: -counts[v])
    lines = [
        "# debian-works-with",
        "",
        "Real text classification built offline by `bench/data/make_debian_works_with.py`: Debian bookworm",
        "(main, amd64) package descriptions (synopsis + first paragraph of the long description, written by each",
        "package's maintainers, exactly as in `debian-sections`) labelled with the package's debtags `works-with::`",
        "facet: the kind of data the program works with. This is another human annotation than the archive",
        "sections (debtags are assigned per package by Debian contributors on debtags.debian.org).",
        "",
        "- Kept: packages with exactly ONE works-with value (a value whose parent is also tagged, e.g. `image:raster`",
        f"  next to `image`, counts as the parent; `TODO` is ignored), and values with at least {min_per_label} such packages.",
        "- Skipped like `debian-sections`: names starting with lib or ending in -dev/-doc/-dbg/-data/-common/-l10n/-examples/-tests,",
        f"  descriptions shared with an earlier package (Description-md5), first paragraphs under {MIN_WORDS} words.",
        "- Split by a hash of the SOURCE package (sha256 mod 20: 0-2 test, 3-5 dev, else train), so no source package is",
        "  on two sides; the same split as `debian-synopsis`. Rows shuffled with seed 0; no per-class cap (labels are",
        "  imbalanced: report macro-F1 next to accuracy).",
        '- Fields as `debian-sections`: `{"text": ..., "label": ...}`.',
        f"- Source lists: `{source}`.",
        "",
        "| label (works-with) | train | dev | test |",
        "|---|---:|---:|---:|",
    ]
    for v in labels:
        lines.append(f"| {v} | {per['train'][v]} | {per['dev'][v]} | {per['test'][v]} |")
    lines.append(f"| **total** | {len(splits['train'])} | {len(splits['dev'])} | {len(splits['test'])} |")
    cut = [f"{v} ({n})" for v, n in counts.most_common() if n < min_per_label]
    lines += ["", f"Values below the cut (packages with that single value): {', '.join(cut) or 'none'}.", "", *REBUILD]
    return "\n".join(lines) + "\n"


def synopsis_readme(splits: dict[str, list], dropped: Counter, source: str, wrote_train: bool) -> str:
    lines = [
        "# debian-synopsis",
        "",
        "Real retrieval pairs built offline by `bench/data/make_debian_works_with.py`: for Debian bookworm (main, amd64)",
        "packages, the one-line synopsis is the query and the first paragraph of the long description is its one",
        "relevant document, in the pair format `edgekit eval` takes for embedding models",
        '(`{"query": ..., "doc": ...}`; recall@1, recall@10 and MRR rank every doc of the file for every query).',
        "",
        "- Same package filter and the same source-package split as `debian-works-with` (sha256 of the source name mod 20:",
        "  0-2 test, 3-5 dev, else train): no source package on two sides.",
        f"- dev/test: at most one pair per source package, capped at {SYNOPSIS_CAP['dev']} / {SYNOPSIS_CAP['test']} after a seeded shuffle.",
        f"- Dropped: docs under {MIN_DOC_WORDS} words, docs that contain the query's words verbatim, a query or doc that",
        "  repeats an earlier one (after lower-casing and dropping punctuation).",
        f"- Source lists: `{source}`.",
        "",
        "| split | pairs |",
        "|---|---:|",
    ]
    for s in SPLITS:
        if s != "train" or wrote_train:
            lines.append(f"| {s} | {len(splits[s])} |")
    if not wrote_train:
        lines.append(f"| train (not written; `--synopsis-train`) | {len(splits['train'])} |")
    lines += ["", "Dropped pairs: " + ", ".join(f"{k} {v}" for k, v in dropped.most_common()) + ".", "", *REBUILD]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", default=LISTS, help="apt lists folder holding the bookworm main Packages and Translation-en")
    ap.add_argument("--min-per-label", type=int, default=MIN_PER_LABEL)
    ap.add_argument("--synopsis-train", action="store_true", help="also write debian-synopsis/train.jsonl")
    args = ap.parse_args()
    lists = args.lists.rstrip("/") + "/"
    pk = glob.glob(lists + "*_bookworm_main_binary-amd64_Packages*")
    tr = glob.glob(lists + "*_bookworm_main_i18n_Translation-en*")
    if not pk or not tr:
        raise SystemExit(
            f"{lists}: no bookworm main Packages / Translation-en lists; run "
            "'mkdir -p /tmp/aptlists-en/partial && apt-get -o Acquire::Languages=en -o Dir::State::Lists=/tmp/aptlists-en update' "
            "and pass --lists /tmp/aptlists-en"
        )
    rows = packages(read_index(pk[0]), read_index(tr[0]))
    source = f"{Path(pk[0]).name}, {Path(tr[0]).name}"
    ww, counts = works_with_task(rows, min_per_label=args.min_per_label)
    _write(WORKS_WITH, ww)
    (WORKS_WITH / "README.md").write_text(works_with_readme(ww, counts, args.min_per_label, source))
    pairs, dropped = synopsis_pairs(rows)
    which = SPLITS if args.synopsis_train else ("dev", "test")
    if not args.synopsis_train and (SYNOPSIS / "train.jsonl").exists():
        (SYNOPSIS / "train.jsonl").unlink()
    _write(SYNOPSIS, pairs, which)
    (SYNOPSIS / "README.md").write_text(synopsis_readme(pairs, dropped, source, args.synopsis_train))
    print((WORKS_WITH / "README.md").read_text())
    print((SYNOPSIS / "README.md").read_text())


if __name__ == "__main__":
    main()

"""bench/data/make_debian_works_with.py on a small synthetic Packages + Translation-en pair."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "data"))
import make_debian_works_with as mk

BODY = "handles {what} for people who need to work with {what} every single day of the week"


def _stanzas(specs: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(Packages text, Translation-en text) for (package, source, Tag field) triples."""
    packages, translations = [], []
    for i, (name, source, tag) in enumerate(specs):
        md5 = f"{i:032x}"
        lines = [f"Package: {name}"] + ([f"Source: {source} (1.0-1)"] if source != name else [])
        lines += ["Version: 1.0-1", f"Description: tool {i}", f"Description-md5: {md5}"]
        if tag:
            first, *rest = [t.strip() for t in tag.split(",")]
            lines.append("Tag: " + ",\n ".join([first, *rest]))  # multi-line, as in the archive
        lines.append("Section: utils")
        packages.append("\n".join(lines))
        translations.append(
            f"Package: {name}\nDescription-md5: {md5}\nDescription-en: tool number {i} for {name}\n {BODY.format(what=name)}\n .\n second paragraph"
        )
    return "\n\n".join(packages) + "\n", "\n\n".join(translations) + "\n"


def test_parses_multiline_tags_and_first_paragraph():
    pk, tr = _stanzas([("alpha", "alpha", "role::program, works-with::text,\nuse::editing, works-with::image, works-with::image:raster")])
    (row,) = mk.packages(pk, tr)
    assert row["works_with"] == ["image", "text"]  # image:raster counts as its tagged parent
    assert row["synopsis"] == "tool number 0 for alpha"
    assert row["body"] == BODY.format(what="alpha")  # the first paragraph only
    assert mk.works_with("works-with::image:raster, works-with::TODO") == ["image:raster"]  # no parent tagged: kept as is


def test_single_value_selection_cut_and_no_source_on_two_sides():
    specs = []
    for s in range(120):  # 120 sources with 2 binaries each: 'text' and 'audio' have enough single-valued packages
        label = "text" if s % 2 else "audio"
        specs += [(f"prog{s}", f"src{s}", f"works-with::{label}"), (f"prog{s}-extra", f"src{s}", f"works-with::{label}, role::program")]
    specs += [(f"rare{s}", f"rare{s}", "works-with::fax") for s in range(5)]  # a value below the cut
    specs += [(f"multi{s}", f"multi{s}", "works-with::text, works-with::audio") for s in range(80)]  # two values: never kept
    specs += [(f"libfoo{s}", f"libsrc{s}", "works-with::text") for s in range(10)]  # library names: skipped
    specs += [("untagged", "untagged", "works-with::TODO, role::program")]
    pk, tr = _stanzas(specs)
    rows = mk.packages(pk, tr)
    source_of = {f"tool number {i} for {name}": src for i, (name, src, _) in enumerate(specs)}
    splits, counts = mk.works_with_task(rows, min_per_label=60)
    assert counts["fax"] == 5 and "TODO" not in counts
    seen: dict[str, str] = {}
    texts = 0
    for split, items in splits.items():
        for item in items:
            assert item.keys() == {"text", "label"}
            assert item["label"] in ("text", "audio")
            src = source_of[item["text"].split(". ", 1)[0]]
            assert not src.startswith(("multi", "rare", "libsrc"))
            assert seen.setdefault(src, split) == split, f"source {src} on two sides"
            texts += 1
    assert texts == 240
    assert all(splits[s] for s in mk.SPLITS)  # 120 sources reach every side
    assert [x["label"] for x in splits["train"]] != sorted(x["label"] for x in splits["train"])  # shuffled, not grouped by class
    again, _ = mk.works_with_task(rows, min_per_label=60)
    assert again == splits  # the seed fixes the order
    strict, _ = mk.works_with_task(rows, min_per_label=200)
    assert not any(strict.values())


def test_synopsis_pairs_drop_and_one_per_source():
    rows = [
        {
            "package": f"p{i}",
            "source": f"s{i // 3}",
            "synopsis": f"query {i} words",
            "body": f"document {i} " + "word " * 12,
            "works_with": [],
        }
        for i in range(300)
    ]
    rows.append({"package": "short", "source": "short", "synopsis": "tiny", "body": "too short a doc", "works_with": []})
    rows.append(
        {"package": "echo", "source": "echo", "synopsis": "Echo tool", "body": "The echo tool repeats " + "word " * 12, "works_with": []}
    )
    splits, dropped = mk.synopsis_pairs(rows, cap={"dev": 10, "test": 1000})
    assert len(splits["dev"]) == 10
    by_query = {r["synopsis"]: r["source"] for r in rows}
    sides: dict[str, str] = {}
    for split, items in splits.items():
        sources = [by_query[p["query"]] for p in items]
        if split != "train":
            assert len(sources) == len(set(sources)), "two pairs of one source in dev/test"
        for src in sources:
            assert sides.setdefault(src, split) == split
    queries = {p["query"] for items in splits.values() for p in items}
    assert "tiny" not in queries and "Echo tool" not in queries
    assert dropped["doc repeats the query"] == 1 and dropped[f"doc under {mk.MIN_DOC_WORDS} words"] == 1

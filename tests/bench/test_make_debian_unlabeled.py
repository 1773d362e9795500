"""bench/data/make_debian_unlabeled.py: only training-side packages of every task, no labelled text, seeded order."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "data"))
import make_debian_unlabeled as mk
import make_debian_works_with as ww

WORDS = "reads writes and converts files of many kinds for people at work every day"


def _rows(n: int) -> list[dict]:
    return [{"package": f"p{i}", "source": f"src{i}", "synopsis": f"tool {i}", "body": f"{WORDS} {i}", "works_with": []} for i in range(n)]


def test_keeps_training_side_sources_of_every_task_and_drops_labelled_texts():
    rows = _rows(400)
    rows.append({**rows[0], "package": "short", "source": "short-src", "body": "too short"})
    both = [r for r in rows if ww.split_of(r["source"]) == "train" and mk.sections_split(r["source"]) == "train"]
    assert 0 < len(both) < 400  # the synthetic sources fall on every side of both splits
    labelled = {f"{both[0]['synopsis']}. {both[0]['body']}"}
    texts, counts = mk.corpus(rows, labelled)
    want = {f"{r['synopsis']}. {r['body']}" for r in both if len(r["body"].split()) >= mk.MIN_WORDS} - labelled
    assert set(texts) == want and len(texts) == len(want) == counts["kept"]
    assert counts["training_side"] == len(both)
    again, _ = mk.corpus(list(reversed(rows)), labelled)
    assert again == texts  # the order is the seeded shuffle, not the lists' order
    assert texts != sorted(texts)

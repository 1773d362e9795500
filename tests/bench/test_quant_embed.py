"""bench/quant_embed.py: the held-out filter of its distillation corpus and its run plan (the study itself runs on the GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import quant_embed as qe


def test_held_out_matches_synopsis_or_paragraph():
    queries, docs = {"Text editor for power users"}, {"It edits files. Fast."}
    assert qe.held_out("Text editor for power users. Something else entirely.", queries, docs)
    assert qe.held_out("Another synopsis. It edits files. Fast.", queries, docs)  # the doc itself holds '. '
    assert not qe.held_out("Text editor. For power users.", queries, docs)
    assert not qe.held_out("Text editor for power users", queries, docs)  # no paragraph: not a corpus text


def test_corpus_leaves_out_every_dev_and_test_pair(tmp_path):
    path, info = qe.build_corpus(tmp_path, None)
    texts = path.read_text(encoding="utf-8").splitlines()
    assert len(texts) == info["texts"] > 1000 and len(set(texts)) == len(texts)
    assert info["held_out_dropped"] > 0
    for split in ("dev", "test"):
        rows = [json.loads(line) for line in (qe.PAIRS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        held = {f"{r['query']}. {r['doc']}" for r in rows}
        assert not held & set(texts)
        starts = {r["query"] + ". " for r in rows}
        assert not any(t[: t.find(". ") + 2] in starts for t in texts if ". " in t)


def test_bit_w1a8_rides_on_the_multi_step_run():
    assert qe.runs_for(list(qe.SCHEMES)) == {
        "ternary-w2a8": [("ternary-w2a8", "")],
        "ternary-w2e2a8": [("ternary-w2e2a8", "")],
        "bit-w1a1": [("bit-w1a8", "step1-bit-w1a8"), ("bit-w1a1", "")],
    }
    assert qe.runs_for(["bit-w1a8"]) == {"bit-w1a8": [("bit-w1a8", "")]}
    assert qe.runs_for(["bit-w1a1"]) == {"bit-w1a1": [("bit-w1a1", "")]}

"""Sequence lengths shared by the shape-bucketed targets (edgekit/deploy/targets/shapes.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.deploy import artifact, data
from edgekit.deploy.targets import TARGETS, resolve_options, shapes
from edgekit.errors import ConfigError, TargetError

BUCKETED = ("openvino-cpu", "openvino-npu", "jetson", "ort-mobile")


def test_buckets_from_lengths_are_p50_p90_max_rounded_to_16_and_capped():
    lengths = [5] * 50 + [40] * 40 + [200] * 10
    assert shapes.buckets_from_lengths(lengths, max_length=128) == [32, 64, 128]
    assert shapes.buckets_from_lengths([10, 11, 12], max_length=128) == [16]
    assert shapes.buckets_from_lengths([100], max_length=126) == [112]
    assert shapes.buckets_from_lengths([130], max_length=126) == [126]
    with pytest.raises(ConfigError, match="no texts"):
        shapes.buckets_from_lengths([], max_length=128)


def _padded(lengths: list[int], buckets: list[int]) -> int:
    return sum(shapes.pick_bucket(n, buckets) for n in lengths)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 140), min_size=1, max_size=40), st.integers(1, 4))
def test_least_padding_is_the_best_choice_of_that_many_lengths(lengths, count):
    max_length = 128
    got = shapes.least_padding(lengths, max_length, count)
    grid = sorted({min(max_length, 16 * -(-n // 16)) for n in lengths})
    assert got == sorted(set(got)) and len(got) <= count and got[-1] == grid[-1] and set(got) <= set(grid)
    held = [n for n in lengths if n <= grid[-1]]
    # brute force: every choice of at most `count` grid lengths that holds the longest input
    best = min(_padded(held, [*c, grid[-1]]) for k in range(count) for c in itertools.combinations(grid[:-1], k))
    assert _padded(held, got) == best


def test_least_padding_follows_the_texts():
    lengths = [10] * 50 + [60] * 40 + [120] * 10
    assert shapes.least_padding(lengths, 128, 3) == [16, 64, 128]
    assert shapes.least_padding(lengths, 128, 8) == [16, 64, 128]  # more lengths cannot pad less
    assert shapes.least_padding([300], 256, 4) == [256]
    with pytest.raises(ConfigError, match="no texts"):
        shapes.least_padding([], 128, 4)


def test_fit_feed_pads_with_the_pad_id_and_mask_zero():
    feed = {
        "input_ids": np.array([[5, 6, 7, 1, 1]]),
        "attention_mask": np.array([[1, 1, 1, 0, 0]]),
        "token_type_ids": np.zeros((1, 5), np.int64),
    }
    assert shapes.used_length(feed, pad_id=1) == 3
    fitted = shapes.fit_feed(feed, batch=2, seq=8, pad_id=1)
    assert fitted["input_ids"].tolist() == [[5, 6, 7, 1, 1, 1, 1, 1]] * 2
    assert fitted["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]] * 2
    cut = shapes.fit_feed(feed, batch=1, seq=4, pad_id=1)
    assert cut["input_ids"].tolist() == [[5, 6, 7, 1]]
    assert shapes.pick_bucket(3, [4, 8]) == 4
    with pytest.raises(TargetError, match="an input of 9 tokens is longer than the largest sequence length compiled \\(8\\)"):
        shapes.pick_bucket(9, [4, 8])


def test_run_in_buckets_chunks_rows_and_cuts_the_padding_rows():
    feed = {
        "input_ids": np.array([[3, 4, 0, 0], [3, 0, 0, 0], [3, 4, 5, 6]]),
        "attention_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1] * 4]),
    }
    seen = []

    def run(bucket, f):
        seen.append((bucket, f["input_ids"].shape))
        return {"out": f["attention_mask"].sum(axis=1, keepdims=True)}

    out = shapes.run_in_buckets(feed, batch=2, buckets=[2, 4], pad_id=0, run=run)
    assert seen == [(2, (2, 2)), (4, (2, 4))]  # the last chunk (one row) is padded to the batch, then cut
    assert out["out"].tolist() == [[2], [1], [4]]


@pytest.mark.parametrize("name", BUCKETED)
def test_every_bucketed_target_takes_the_same_spelling(name):
    assert resolve_options(name, {"seq_lens": "64, 64"}).seq_lens == [64]
    assert resolve_options(name, {"seq_lens": [128]}).seq_lens == [128]
    if name != "ort-mobile":  # ort-mobile fixes one shape: one length
        assert resolve_options(name, {"seq_lens": "128, 64,64"}).seq_lens == [64, 128]
    assert resolve_options(name, {"data": "texts.txt"}).data == "texts.txt"
    with pytest.raises(ConfigError, match=f"target {name}: options: give seq_lens or data, not both"):
        resolve_options(name, {"seq_lens": "64", "data": "texts.txt"})
    with pytest.raises(ConfigError, match=f"target {name}: option seq_lens: .*each >= 4"):
        resolve_options(name, {"seq_lens": "2"})
    assert "seq_lens" in TARGETS[name].options_model.model_fields and "data" in TARGETS[name].options_model.model_fields


def test_no_other_spelling_of_sequence_lengths_is_left():
    for cls in TARGETS.values():
        assert not {"buckets", "buckets_from", "fixed_shape"} & set(cls.options_model.model_fields), cls.name


def test_plan_seq_lens_from_the_option_and_from_data(exported, tmp_path):
    src = exported("bert-embedding")  # max_length 64
    manifest = artifact.read_manifest(src)
    assert shapes.plan_seq_lens(src, manifest, None, None) is None
    assert shapes.plan_seq_lens(src, manifest, [16, 64], None) == shapes.SeqPlan([16, 64], "option seq_lens")
    with pytest.raises(ConfigError, match="sequence length 128 exceeds the model's max length 64"):
        shapes.plan_seq_lens(src, manifest, [16, 128], None)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data.sample_texts()[:50]) + "\n")
    plan = shapes.plan_seq_lens(src, manifest, None, str(texts))
    assert len(plan.observed) == 50 and plan.lengths == shapes.buckets_from_lengths(plan.observed, 64)
    assert "50 texts" in plan.source and plan.lengths[-1] <= 64

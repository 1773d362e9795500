"""QAT speed features and dev selection: length-bucketed batches, pre-tokenized texts, lr scaling,
the quantizers' host-side init flag, the speed record and the dev curve with the best state kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekit.build.load import load
from edgekit.build.quant import loop
from edgekit.build.quant.config import make_config
from edgekit.build.quant.quantizers import ElasticBinary, LSQActivation
from edgekit.build.quant.report import QuantReport
from edgekit.build.quant.textdata import Tokens, batch_order
from edgekit.build.quant.train import TrainOptions, run
from edgekit.deploy import data


@pytest.fixture(scope="module")
def train_txt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "train.txt"
    p.write_text("\n".join(data.sample_texts()[:48]))
    return p


def _opts(model, train_txt, out, **kw) -> TrainOptions:
    base = dict(model=str(model), data=str(train_txt), out=str(out), batch_size=8, max_length=32, progress=False, calib_batches=1)
    return TrainOptions(**{**base, **kw})


def test_batch_order_buckets_by_length_and_is_seeded():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    plain = batch_order(lengths, 8, seed=0, epoch=0)
    bucketed = batch_order(lengths, 8, seed=0, epoch=0, buckets=5)
    assert len(plain) == len(bucketed) == 25
    assert sorted(i for b in bucketed for i in b) == list(range(200))  # every text once
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert spread(bucketed) < spread(plain) / 3  # similar lengths share a batch
    assert bucketed == batch_order(lengths, 8, seed=0, epoch=0, buckets=5)
    assert bucketed != batch_order(lengths, 8, seed=0, epoch=1, buckets=5)  # reshuffled each epoch
    # shared out like DistributedSampler: equal shares, together every text
    shares = [batch_order(lengths[:199], 8, seed=0, epoch=0, rank=r, world=2, buckets=5) for r in range(2)]
    flat = [[i for b in s for i in b] for s in shares]
    assert len(flat[0]) == len(flat[1]) == 100 and set(flat[0]) | set(flat[1]) == set(range(199))


def test_tokens_cut_batches_to_their_longest_text(encoders):
    enc = encoders("bert-classifier")
    texts = ["a short one", "a rather longer text with many more words in it than the first", "mid length text here"]
    tokens = Tokens(enc, texts, 32)
    assert tokens.lengths[1] > tokens.lengths[2] > tokens.lengths[0]
    inputs, mask = tokens.batch([0, 2], "cpu")
    assert mask.shape == (2, tokens.lengths[2]) and int(mask.sum()) == tokens.lengths[0] + tokens.lengths[2]
    ref = enc.tokenizer([texts[0], texts[2]], padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert torch.equal(inputs[0], ref["input_ids"])
    _, full = tokens.batch([0, 2], "cpu", pad_to_max=True)
    assert full.shape == (2, 32)


def test_learning_rate_scales_with_batch(tmp_path):
    q = make_config("bit-w1a1")
    base = dict(model="m", data="d", out="o")
    assert loop.learning_rate(TrainOptions(**base, batch_size=128), q) == pytest.approx(5e-4)
    assert loop.learning_rate(TrainOptions(**base, batch_size=128, lr_scaling="sqrt"), q) == pytest.approx(1e-3)
    assert loop.learning_rate(TrainOptions(**base, batch_size=64, lr=1e-4, lr_scaling="linear"), q) == pytest.approx(2e-4)
    assert not loop.use_bf16(TrainOptions(**base), torch.device("cpu"))  # auto: fp32 on the CPU


def test_init_flag_is_cached_and_reread_after_loading():
    q = LSQActivation(8)
    x = torch.randn(4, 16)
    q.train()
    with torch.enable_grad():
        q.split(x)  # initialises from this batch
    assert q._ready and bool(q.initialized)
    fresh = ElasticBinary(two_set=False)
    assert fresh._ready is False
    fresh.load_state_dict({"alpha": torch.tensor(0.5), "beta": torch.tensor(0.0), "initialized": torch.tensor(1, dtype=torch.uint8)})
    assert fresh._ready is None  # unknown until read once
    codes, scale = fresh.split(torch.tensor([0.2, -0.3]))
    assert fresh._ready is True and torch.equal(codes, torch.tensor([1.0, -1.0])) and float(scale.detach()) == 0.5


def test_speed_and_dev_curve_in_report(checkpoints, tmp_path):
    texts = data.sample_texts()[:48]
    labeled = tmp_path / "train.jsonl"
    labeled.write_text("\n".join(json.dumps({"text": t, "label": ["negative", "positive"][i % 2]}) for i, t in enumerate(texts)))
    out = tmp_path / "out"
    report = run(_opts(checkpoints["bert-classifier"], labeled, out, scheme="ternary-w2a8", steps=6, eval_data=str(labeled), eval_every=2))
    stage = report.stages[0]
    speed = stage.speed
    assert speed.precision == "fp32" and speed.padding == "longest" and speed.steps_per_s > 0
    assert speed.samples_per_s == pytest.approx(speed.steps_per_s * 8, rel=0.01)
    assert 0 < speed.real_token_share <= 1
    curve = stage.dev_curve
    assert curve.metric == "accuracy" and [s for s, _ in curve.points] == [2, 4, 6]
    best = max(v for _, v in curve.points)
    assert curve.best_score == best and curve.best_step == max(s for s, v in curve.points if v == best)
    # the saved checkpoint is the kept state: its dev accuracy is the curve's best
    assert stage.eval.accuracy == pytest.approx(curve.best_score)
    back = QuantReport.read(out / "quant_report.json")
    assert back.stages[0].dev_curve == curve and back.stages[0].speed == speed
    enc = load(out)
    assert json.loads((out / "edgekit_quant.json").read_text())["step"] == 6
    assert enc.info.task == "classifier"


def test_padding_to_max_length_computes_every_position(checkpoints, train_txt, tmp_path):
    report = run(_opts(checkpoints["bert-embedding"], train_txt, tmp_path / "o", scheme="ternary-w2a8", steps=2, padding="max_length"))
    speed = report.stages[0].speed
    assert speed.padding == "max_length" and speed.real_token_share < 0.9  # short texts padded to 32
    assert report.stages[0].dev_curve is None  # no eval data, no curve

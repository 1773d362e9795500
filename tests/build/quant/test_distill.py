"""edgekit.build.quant.distill: losses vanish for identical teacher and student, are positive otherwise."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.build.quant import calibrate, quantize_
from edgekit.build.quant.distill import DistillConfig, Distiller

ALL = DistillConfig(logits=1, hidden=1, attention=1, dmd=1, embedding=1)


def _inputs(enc, texts):
    feed = enc.tokenize(texts)
    return tuple(torch.from_numpy(feed[n]) for n in enc.spec.input_names), torch.from_numpy(feed["attention_mask"])


@pytest.mark.parametrize("name", ["bert-classifier", "distilbert-embedding", "roberta-classifier"])
def test_zero_for_identical(encoders, texts, name):
    enc = encoders(name)
    inputs, mask = _inputs(enc, texts[:3])
    with Distiller(enc.module, copy.deepcopy(enc.module), ALL, task=enc.info.task) as d:
        loss, parts = d.loss(inputs, mask)
    assert set(parts) >= {"hidden", "attention", "dmd"}
    assert all(abs(v) < 1e-6 for v in parts.values()), parts


@pytest.mark.parametrize("name", ["bert-classifier", "distilbert-embedding"])
def test_positive_for_quantized_student(encoders, texts, name):
    enc = encoders(name)
    student = copy.deepcopy(enc.module)
    quantize_(student, "bit-w1a1")
    inputs, mask = _inputs(enc, texts[:3])
    calibrate(student, [inputs])
    with Distiller(enc.module, student, ALL, task=enc.info.task) as d:
        loss, parts = d.loss(inputs, mask)
    assert all(v > 0 for v in parts.values()), parts
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_ce_with_labels(encoders, texts):
    enc = encoders("bert-classifier")
    inputs, mask = _inputs(enc, texts[:3])
    cfg = DistillConfig(logits=1, ce=1)
    with Distiller(enc.module, copy.deepcopy(enc.module), cfg, task="classifier") as d:
        _, parts = d.loss(inputs, mask, torch.tensor([0, 1, 2]))
    assert parts["ce"] > 0 and parts["logits"] < 1e-6

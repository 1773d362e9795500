"""Fixtures shared by the early-exit tests."""

from __future__ import annotations

import pytest

from edgekit.build.exits.model import MultiExitModel
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.load import load


@pytest.fixture(scope="session")
def trained(checkpoints, texts, tmp_path_factory):
    """Exit heads on the tiny 2-layer BERT classifier (exits at layers 1 and 2), 3 epochs of self-distillation."""
    out = tmp_path_factory.mktemp("heads")
    model = MultiExitModel(load(checkpoints["bert-classifier"]))
    train_heads(model, texts * 4, None, out, TrainConfig(epochs=3, batch=4), resume=False)
    model.save(out)
    return out

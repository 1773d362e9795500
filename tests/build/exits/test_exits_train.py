"""Joint exit training (backbone not frozen): self-distillation, the final exit anchored to the original model."""

from __future__ import annotations

import json

import numpy as np

from edgekit.build.exits.model import BACKBONE, MultiExitModel, load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.load import load


def test_joint_training_moves_the_backbone_keeps_the_final_exit_and_saves_it(checkpoints, texts, tmp_path):
    src = checkpoints["bert-classifier"]
    original = MultiExitModel(load(src), [1])
    feed = original.encoder.tokenize(texts)
    before = torch_exits(original, feed)
    model = MultiExitModel(load(src), [1])
    cfg = TrainConfig(epochs=3, batch=4, freeze_backbone=False, backbone_lr=1e-4, device="cpu")
    report = train_heads(model, texts * 4, [0, 1, 2, 0, 1] * 4, tmp_path / "h", cfg, resume=False)
    assert not report["frozen_backbone"] and len(report["loss"]) == 3 and all(np.isfinite(report["loss"]))
    model.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "exits.json").read_text())
    assert meta["original"] == str(load(src).info.path) and meta["source"].endswith(BACKBONE)
    again = load_exits(tmp_path / "h")  # from the saved backbone, not the original checkpoint
    after = torch_exits(again, feed)
    assert not np.allclose(after[0]["output"], before[0]["output"], atol=1e-4)  # the backbone moved
    np.testing.assert_allclose(after[-1]["output"], torch_exits(model, feed)[-1]["output"], atol=1e-4)
    # the anchor keeps the final exit's decisions on the training texts
    assert (after[-1]["output"].argmax(-1) == before[-1]["output"].argmax(-1)).mean() >= 0.8


def test_joint_training_resumes_with_its_backbone_and_teacher(checkpoints, texts, tmp_path):
    cfg = TrainConfig(epochs=1, batch=4, freeze_backbone=False, device="cpu")
    model = MultiExitModel(load(checkpoints["bert-classifier"]), [1])
    train_heads(model, texts, None, tmp_path, cfg, resume=False)
    resumed = MultiExitModel(load(checkpoints["bert-classifier"]), [1])
    r = train_heads(resumed, texts, None, tmp_path, TrainConfig(epochs=2, batch=4, freeze_backbone=False, device="cpu"))
    assert len(r["loss"]) == 1  # only epoch 2 ran
    w = dict(model.hf.named_parameters())
    name = next(n for n in w if "layer.0" in n and n.endswith("weight"))
    assert not np.allclose(
        dict(resumed.hf.named_parameters())[name].detach().numpy(),
        load(checkpoints["bert-classifier"]).module.model.state_dict()[name].numpy(),
    )

"""Joint exit training (backbone not frozen): self-distillation, the final exit anchored to the original model."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_dev_selection_keeps_the_chosen_epoch_and_reports_the_curve(checkpoints, texts, tmp_path):
    src = checkpoints["bert-classifier"]
    labels = [0, 1, 2, 0, 1]
    model = MultiExitModel(load(src), [1])
    cfg = TrainConfig(epochs=3, batch=4, freeze_backbone=False, backbone_lr=1e-4, device="cpu", final_tolerance=100.0)
    report = train_heads(model, texts * 4, labels * 4, tmp_path / "h", cfg, resume=False, dev=(texts, labels))
    d = report["dev"]
    assert [p["epoch"] for p in d["curve"]] == [1, 2, 3] and all(p["final_within"] for p in d["curve"])
    # with every epoch's final exit allowed, the kept epoch has the best mean of the early exits
    best = max(d["curve"], key=lambda p: (sum(p["per_exit"][:-1]), -p["epoch"]))
    assert d["chosen_epoch"] == best["epoch"]
    # the model holds the chosen epoch's state: its dev scores are the curve's point
    feed = model.encoder.tokenize(texts)
    outs = torch_exits(model, feed)
    got = [100.0 * float((o["output"].argmax(-1) == np.asarray(labels)).mean()) for o in outs]
    assert got == pytest.approx(best["per_exit"], abs=1e-3)


def test_dev_selection_without_an_epoch_within_tolerance_keeps_the_best_final_exit(checkpoints, texts, tmp_path):
    model = MultiExitModel(load(checkpoints["bert-classifier"]), [1])
    # a huge backbone learning rate against labels that disagree with the original: the final exit moves away
    cfg = TrainConfig(epochs=2, batch=4, freeze_backbone=False, backbone_lr=5e-3, device="cpu", final_tolerance=-1.0)
    report = train_heads(model, texts * 2, [2, 2, 2, 2, 2] * 2, tmp_path / "h", cfg, resume=False, dev=(texts, None))
    d = report["dev"]
    assert not any(p["final_within"] for p in d["curve"]) and not d["chosen_final_within"]
    assert d["chosen_epoch"] == max(d["curve"], key=lambda p: (p["per_exit"][-1], -p["epoch"]))["epoch"]


def test_dev_selection_of_frozen_heads_scores_from_cached_features_like_the_whole_model(checkpoints, texts, tmp_path):
    from edgekit.build.exits.train import collect, dev_outputs

    model = MultiExitModel(load(checkpoints["bert-classifier"]), [1])
    labels = [0, 1, 2, 0, 1]
    report = train_heads(model, texts * 2, labels * 2, tmp_path / "h", TrainConfig(epochs=2, batch=4, device="cpu"), dev=(texts, labels))
    assert report["dev"]["chosen_final_within"]  # a frozen backbone keeps the final exit exactly
    got = collect(model, texts, 128, 64, "cpu")
    cached = dev_outputs(model, texts, "cpu", 64, (got["features"], got["final"]))
    whole = dev_outputs(model, texts, "cpu", 64)
    for a, b in zip(cached, whole, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_mean_pooled_classifier_heads_train_save_load_and_export_like_pytorch(checkpoints, texts, tmp_path):
    import onnxruntime as ort
    import torch

    from edgekit.build.exits.model import EXITS_CONFIG, ExitHead, mean_pool
    from edgekit.build.exits.segments import export_segments
    from edgekit.deploy.exits.policies import make

    model = MultiExitModel(load(checkpoints["bert-classifier"]), [1])  # mean: the classifier default
    labels = [0, 1, 2, 0, 1]
    train_heads(model, texts * 2, labels * 2, tmp_path / "h", TrainConfig(epochs=1, batch=4, device="cpu"), resume=False)
    model.save(tmp_path / "h")
    assert json.loads((tmp_path / "h" / EXITS_CONFIG).read_text())["head_pooling"] == "mean"
    back = load_exits(tmp_path / "h")
    assert back.config.head_pooling == "mean" and isinstance(back.heads[0], ExitHead)
    hidden, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(back.heads[0].features(hidden, mask), mean_pool(hidden, mask))  # not the first token
    assert not torch.equal(back.heads[0].features(hidden, mask), hidden[:, 0])
    # the exported first segment computes the same exit as PyTorch, padding masked out of the mean
    feed = back.encoder.tokenize(texts)
    assert (feed["attention_mask"] == 0).any()
    export_segments(back, make("entropy", 0.5, "classifier"), tmp_path / "onnx")
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "seg0.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    np.testing.assert_allclose(got["output"], torch_exits(back, feed)[0]["output"], atol=1e-5)


def test_head_pooling_errors_are_one_line(checkpoints, texts, tmp_path):
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown head pooling 'max'"):
        MultiExitModel(load(checkpoints["bert-classifier"]), [1], head_pooling="max")
    assert MultiExitModel(load(checkpoints["bert-classifier"]), [1]).config.head_pooling == "mean"  # the classifier default
    cls = MultiExitModel(load(checkpoints["bert-classifier"]), [1], head_pooling="cls")
    train_heads(cls, texts, [0, 1, 2, 0, 1], tmp_path / "h", TrainConfig(epochs=1, batch=4, device="cpu"), resume=False)
    mean = MultiExitModel(load(checkpoints["bert-classifier"]), [1], head_pooling="mean")
    with pytest.raises(ConfigError, match="heads there read 'cls', not 'mean'"):
        train_heads(mean, texts, [0, 1, 2, 0, 1], tmp_path / "h", TrainConfig(epochs=2, batch=4, device="cpu"), resume=True)
    # exits.json written before head pooling existed: the classifier default
    cls.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "exits.json").read_text())
    del meta["head_pooling"]
    (tmp_path / "h" / "exits.json").write_text(json.dumps(meta))
    assert load_exits(tmp_path / "h").config.head_pooling == "cls"


def test_embedding_heads_on_pairs_train_on_both_sides_and_choose_the_epoch_by_recall_at_1(checkpoints, tmp_path):
    from edgekit.build.exits import steps
    from edgekit.deploy import data
    from edgekit.deploy.eval import retrieval

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(data.shipped("pydoc_pairs.jsonl").read_text().splitlines(keepends=True)[:20]))
    report = steps.train(checkpoints["bert-embedding"], pairs, tmp_path / "h", config=TrainConfig(epochs=2, batch=8), dev_file=pairs)
    dev = report["dev"]
    queries, docs = data.read_pairs(pairs)
    model = load_exits(tmp_path / "h")
    final = torch_exits(model, model.encoder.tokenize(queries + docs, max_length=model.encoder.info.max_length))[-1]["output"]
    assert dev["texts"] == 40 and dev["original_final"] == pytest.approx(100 * retrieval(final[:20], final[20:])["recall@1"], abs=1e-3)
    assert all(round(x * 20 / 100, 6).is_integer() for row in dev["curve"] for x in row["per_exit"])  # k of 20 queries, in points


def test_distillation_mixes_a_label_loss_only_into_labelled_rows():
    import torch

    from edgekit.build.exits.train import UNLABELED, distil

    torch.manual_seed(0)
    out, soft = torch.randn(4, 3), torch.randn(4, 3)
    cfg = TrainConfig(temperature=2.0, label_weight=0.5)
    t = cfg.temperature
    kd = torch.nn.functional.kl_div(torch.log_softmax(out / t, -1), torch.softmax(soft / t, -1), reduction="none").sum(-1) * t * t
    ce = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0]), reduction="none")
    assert distil(out, soft, None, cfg).item() == pytest.approx(kd.mean().item(), rel=1e-6)
    labels = torch.tensor([0, 1, 2, 0])
    assert distil(out, soft, labels, cfg).item() == pytest.approx((0.5 * kd + 0.5 * ce).mean().item(), rel=1e-6)
    mixed = torch.tensor([0, UNLABELED, 2, UNLABELED])
    want = torch.stack([0.5 * kd[0] + 0.5 * ce[0], kd[1], 0.5 * kd[2] + 0.5 * ce[2], kd[3]]).mean()
    assert distil(out, soft, mixed, cfg).item() == pytest.approx(want.item(), rel=1e-6)

"""Training exit heads from a trained checkpoint.

Self-distillation from the model's own last exit (works without labels, on any text),
plus cross-entropy on the rows that have a label (an unlabeled corpus added to a labelled
file is distilled only: label ``UNLABELED``); the learned exit score is trained to predict
whether its exit already agrees with the target. With a frozen backbone (the default)
each layer's features are computed once and the heads train on them, which takes seconds
even on a CPU, and the last exit keeps the original model's accuracy exactly.

Joint training (``freeze_backbone=False``) trains the backbone with the heads: every
intermediate exit distils the final layer's current output (multi-exit self-distillation),
and the final exit is anchored to the original model (distillation from its outputs,
computed once before training, plus cross-entropy when labels are given), so it stays close
to the model it started from. The backbone then changes, and is saved beside the heads.

With a dev set (``dev=``), every epoch is scored on it and the kept state is the epoch with the
best mean quality over the intermediate exits among those whose final exit stays within
``final_tolerance`` points of the original model on dev (joint training can pull the final exit
down); where no epoch stays within it, the epoch with the best final exit. The curve and the
choice are in the returned report (``dev``); a resumed run chooses among the epochs it runs. Test data never
enters the choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.build.exits.calibrate import quality
from edgekit.build.exits.model import MultiExitModel, torch
from edgekit.errors import ConfigError, DataError

nn = torch.nn
STATE = "train_state.pt"
UNLABELED = -100  # the label of a distillation-only row (an --unlabeled text), F.cross_entropy's ignore_index


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch: int = 64
    lr: float = 1e-3
    temperature: float = 2.0
    label_weight: float = 0.5
    freeze_backbone: bool = True
    backbone_lr: float = 2e-5  # joint training: the backbone's learning rate (the heads keep ``lr``)
    anchor_weight: float = 1.0  # joint training: weight of the final exit's anchor to the original model
    final_tolerance: float = 0.2  # with a dev set: points the final exit may lose on dev against the original model
    seed: int = 0
    device: str = "auto"
    max_length: int = 128

    def __post_init__(self) -> None:  # values no training can use: one-line errors before any model work
        for flag, value in (("--epochs", self.epochs), ("batch", self.batch)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1 (got {value})", hint=f"pass a positive {flag}")
        for flag, value in (("--lr", self.lr), ("--backbone-lr", self.backbone_lr)):
            if not value > 0:
                raise ConfigError(f"{flag} must be > 0 (got {value:g})", hint=f"pass a positive {flag}, e.g. 1e-3 for the heads")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked but no CUDA GPU is available", hint="use --device cpu")
    return name


@torch.no_grad()
def collect(
    model: MultiExitModel, texts: list[str], batch: int, max_length: int, device: str, progress=None, *, features: bool = True
) -> dict:
    """Per-exit head features (unless not ``features``) and the final exit's outputs for every text (frozen backbone)."""
    enc = model.encoder
    model.to(device).eval()
    feats = [[] for _ in model.config.layers[:-1]]
    final = []
    for i in range(0, len(texts), batch):
        feed = {k: torch.from_numpy(v).to(device) for k, v in enc.tokenize(texts[i : i + batch], max_length=max_length).items()}
        mask = feed["attention_mask"]
        hidden = model.embed(feed)
        prev = 0
        for j, layer in enumerate(model.config.layers):
            hidden = model.run_layers(hidden, mask, prev, layer)
            prev = layer
            if features and j < len(model.heads):
                # a copy: the features are often a view (the CLS row) of the whole hidden state, which
                # .cpu() keeps alive on a CPU; kept views would hold every batch's hidden states
                feats[j].append(model.heads[j].features(hidden, mask).detach().cpu().clone())
        final.append(model.final_head(hidden, mask).detach().cpu().clone())
        if progress:
            progress(min(i + batch, len(texts)))
    return {"features": [torch.cat(f) for f in feats] if features else [], "final": torch.cat(final)}


def anchor_loss(model: MultiExitModel, final, teacher, labels, cfg: TrainConfig):
    """Joint training: keeps the final exit near the original model (its outputs ``teacher``)."""
    if model.task != "classifier":
        return (1 - nn.functional.cosine_similarity(final, teacher, dim=-1)).mean()
    return distil(final, teacher, labels, cfg)


def distil(out, soft, labels, cfg: TrainConfig):
    """Distillation of ``out`` from the logits ``soft`` on every row, mixed per row (``label_weight``)
    with cross-entropy where the row has a label (``labels`` None: no row has; ``UNLABELED``: this one not)."""
    t = cfg.temperature
    log_p, q = nn.functional.log_softmax(out / t, -1), nn.functional.softmax(soft / t, -1)
    kd = nn.functional.kl_div(log_p, q, reduction="none").sum(-1) * t * t
    if labels is None:
        return kd.mean()
    w = cfg.label_weight * (labels != UNLABELED).float()
    ce = nn.functional.cross_entropy(out, labels, reduction="none", ignore_index=UNLABELED)
    return ((1 - w) * kd + w * ce).mean()


@torch.no_grad()
def dev_outputs(model: MultiExitModel, texts: list[str], device: str, max_length: int, features: list | None = None) -> list[torch.Tensor]:
    """Every exit's outputs on dev (CPU tensors); with ``features`` (a frozen backbone's cached head features and
    final outputs, from :func:`collect`) only the heads run."""
    was = model.training
    model.to(device).eval()
    try:
        if features is not None:
            feats, final = features
            return [h.from_features(f.to(device))[0].float().cpu() for h, f in zip(model.heads, feats)] + [final.float()]
        outs: list[list[torch.Tensor]] = [[] for _ in model.config.layers]
        for i in range(0, len(texts), 128):
            feed = {k: torch.from_numpy(v).to(device) for k, v in model.encoder.tokenize(texts[i : i + 128], max_length=max_length).items()}
            for j, o in enumerate(model.forward_all(feed)):
                outs[j].append(o["output"].float().cpu())
        return [torch.cat(chunks) for chunks in outs]
    finally:
        model.train(was)


def dev_scores(task: str, outs: list[torch.Tensor], labels: list[int] | None, reference: torch.Tensor) -> list[float]:
    """Quality of every exit on dev, in points, as calibration scores it (:func:`calibrate.quality`) against
    ``reference``, the original model's outputs: accuracy (agreement with it without labels), or cosine to it."""
    y = np.asarray(labels) if labels is not None else None
    ref = reference.float().numpy()
    return [100.0 * quality(task, out.float().numpy(), ref, y) for out in outs]


class _DevChoice:
    """Keeps the best epoch's state by dev (see the module's docstring)."""

    def __init__(self, model: MultiExitModel, dev, device: str, max_length: int, tolerance: float, *, frozen: bool) -> None:
        self.model, self.device, self.max_length, self.tolerance = model, device, max_length, tolerance
        self.texts, self.labels = dev
        got = collect(model, self.texts, 128, max_length, device, features=frozen)
        self.reference = got["final"]
        # a frozen backbone never changes: its dev features are computed once and each epoch runs only the heads
        self.features = (got["features"], got["final"]) if frozen else None
        self.original = dev_scores(model.task, [self.reference], self.labels, self.reference)[-1]
        self.curve: list[dict] = []
        self.best: tuple[tuple, int, dict] | None = None

    def score(self, epoch: int) -> None:
        outs = dev_outputs(self.model, self.texts, self.device, self.max_length, self.features)
        per_exit = dev_scores(self.model.task, outs, self.labels, self.reference)
        final, early = per_exit[-1], per_exit[:-1]
        within = final >= self.original - self.tolerance
        key = (within, sum(early) / len(early) if within and early else final)
        self.curve.append({"epoch": epoch, "per_exit": [round(x, 3) for x in per_exit], "final_within": within})
        if self.best is None or key > self.best[0]:
            state = {"heads": _copy(self.model.heads.state_dict())}
            if self.model.backbone_tuned:
                state["backbone"] = _copy(self.model.hf.state_dict())
            self.best = (key, epoch, state)

    def restore(self) -> dict:
        _, epoch, state = self.best
        self.model.heads.load_state_dict(state["heads"])
        if "backbone" in state:
            self.model.hf.load_state_dict(state["backbone"])
        within = self.curve[epoch - self.curve[0]["epoch"]]["final_within"]
        return {
            "texts": len(self.texts),
            "original_final": round(self.original, 3),
            "final_tolerance": self.tolerance,
            "chosen_epoch": epoch,
            "chosen_final_within": within,
            "curve": self.curve,
        }


def _copy(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def head_loss(model: MultiExitModel, outs: list, final, labels, cfg: TrainConfig):
    """Distillation (+CE) for every intermediate exit, and BCE for its learned score."""
    total = 0.0
    for out, score in outs:
        if model.task == "classifier":
            target = final.argmax(-1) if labels is None else torch.where(labels != UNLABELED, labels, final.argmax(-1))
            loss = distil(out, final, labels, cfg)
            right = (out.argmax(-1) == target).float()
        else:
            cos = nn.functional.cosine_similarity(out, final, dim=-1)
            loss = (1 - cos).mean()
            right = (cos > 0.98).float()
        total = total + loss + nn.functional.binary_cross_entropy(score.clamp(1e-6, 1 - 1e-6), right.detach())
    return total


def train_heads(
    model: MultiExitModel,
    texts: list[str],
    labels: list[int] | None,
    out: Path,
    cfg: TrainConfig = TrainConfig(),
    *,
    resume: bool = True,
    progress=None,
    dev: tuple[list[str], list[int] | None] | None = None,
) -> dict:
    """Train the exit heads; checkpoints each epoch into ``out`` and resumes from it; with ``dev`` (texts,
    labels or None), keeps the best epoch by dev (module docstring)."""
    if not texts:
        raise DataError("no training texts", hint="pass a text file with at least one line")
    if labels is not None and model.task != "classifier":
        labels = None
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    max_len = min(cfg.max_length, model.encoder.info.max_length)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda **kw: None)
    groups = [{"params": list(model.heads.parameters()), "lr": cfg.lr}]
    if not cfg.freeze_backbone:
        groups.append({"params": list(model.hf.parameters()), "lr": cfg.backbone_lr})
    opt = torch.optim.AdamW(groups)
    y = torch.tensor(labels) if labels is not None else None
    cached, teacher = None, None
    start = 0
    # the original model's dev scores, before a resumed state is loaded (a resumed run chooses among the epochs it runs)
    choice = (
        _DevChoice(model, dev, device, max_len, cfg.final_tolerance, frozen=cfg.freeze_backbone) if dev is not None and dev[0] else None
    )
    if resume and (out / STATE).exists():
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        saved = state.get("head_pooling", "cls" if model.task == "classifier" else model.config.head_pooling)  # older states: cls
        if saved != model.config.head_pooling:
            raise ConfigError(
                f"{out / STATE}: heads there read {saved!r}, not {model.config.head_pooling!r}; refusing to resume them",
                hint=f"use another --out, pass --head-pooling {saved}, or --no-resume to start over",
            )
        model.heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"]
        if "backbone" in state:
            model.hf.load_state_dict(state["backbone"])
            teacher = state["teacher"]
    if not cfg.freeze_backbone:
        if teacher is None:  # the original model's outputs, before any step (a resumed run has them in its state)
            say(stage="features", done=0, total=len(texts))
            teacher = collect(model, texts, 128, max_len, device, lambda n: say(stage="features", done=n, total=len(texts)), features=False)
            teacher = teacher["final"]
        model.backbone_tuned = True
    if cfg.freeze_backbone:
        for p in model.hf.parameters():
            p.requires_grad_(False)
        say(stage="features", done=0, total=len(texts))
        cached = collect(model, texts, 128, max_len, device, progress=lambda n: say(stage="features", done=n, total=len(texts)))
    model.to(device)
    history = []
    for epoch in range(start, cfg.epochs):
        model.heads.train()
        order = torch.randperm(len(texts))
        total, n = 0.0, 0
        for i in range(0, len(texts), cfg.batch):
            idx = order[i : i + cfg.batch]
            yb = y[idx].to(device) if y is not None else None
            if cached is not None:
                final = cached["final"][idx].to(device)
                outs = [h.from_features(f[idx].to(device)) for h, f in zip(model.heads, cached["features"])]
            else:
                model.hf.train()
                feed = {
                    k: torch.from_numpy(v).to(device)
                    for k, v in model.encoder.tokenize([texts[j] for j in idx], max_length=max_len).items()
                }
                all_outs = model.forward_all(feed)
                final = all_outs[-1]["output"]
                outs = [(o["output"], o["score"]) for o in all_outs[:-1]]
                final_loss = cfg.anchor_weight * anchor_loss(model, final, teacher[idx].to(device), yb, cfg)
                final = final.detach()  # the intermediate exits distil the final layer; they do not pull it
            loss = head_loss(model, outs, final, yb, cfg)
            if cached is None:
                loss = loss + final_loss
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"exit training diverged (loss {loss.item()}) at epoch {epoch + 1}",
                    hint=f"lower the learning rate; the last good heads are in {out}",
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
            say(stage="train", epoch=epoch + 1, epochs=cfg.epochs, done=n, total=len(texts), loss=total / n)
        history.append(total / n)
        state = {
            "heads": model.heads.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch + 1,
            "head_pooling": model.config.head_pooling,
        }
        if not cfg.freeze_backbone:
            state |= {"backbone": model.hf.state_dict(), "teacher": teacher}
        torch.save(state, out / STATE)
        if choice is not None:
            say(stage="dev", epoch=epoch + 1, epochs=cfg.epochs, done=0, total=len(choice.texts))
            choice.score(epoch + 1)
    chosen = choice.restore() if choice is not None and choice.best is not None else None
    model.eval().cpu()
    return {
        **({"dev": chosen} if chosen is not None else {}),
        "epochs": cfg.epochs,
        "loss": history,
        "device": device,
        "frozen_backbone": cfg.freeze_backbone,
        "texts": len(texts),
        "labels": labels is not None,
    }

"""Exit heads on a trained encoder, and the segments that deploy them.

Exits sit after chosen layers (1-based; the last layer's exit is the model's own head,
untouched, so a frozen backbone keeps the original accuracy exactly; a jointly trained backbone
is saved beside the heads, in ``backbone/``, and loaded from there). Every exit yields:

- ``logits`` (classifier) or ``embedding`` (embedding model: pooled layer output through a
  small projection initialised to identity, 2D-Matryoshka style, normalised like the final);
- ``rep``: the layer's mean-pooled, L2-normalised hidden state (similarity policy);
- ``score``: a learned exit score in [0, 1] (BERxiT-style learned policy).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.build.load import Encoder, load
from edgekit.deps import require
from edgekit.errors import ConfigError

torch = require("torch", for_="early-exit heads")
nn = torch.nn

EXITS_CONFIG = "exits.json"
EXITS_WEIGHTS = "exits.pt"
BACKBONE = "backbone"  # a jointly trained backbone, as a Hugging Face checkpoint beside the heads
SUPPORTED = ("bert", "roberta", "xlm-roberta", "distilbert")


def _layers(base) -> Any:
    return base.encoder.layer if hasattr(base, "encoder") else base.transformer.layer


def extended_mask(attention_mask, dtype=torch.float32):
    """[B, S] 0/1 -> additive [B, 1, 1, S] mask, as eager attention expects."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(hidden, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


HEAD_POOLING = ("cls", "mean")


def pooled(hidden, attention_mask, pooling: str):
    """The first token (``cls``) or the mean over the real tokens (``mean``)."""
    return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, attention_mask)


class ExitHead(nn.Module):
    """Classifier exit: dense + tanh + linear (BERT pooler shape) on the first token or on the mean
    of the tokens (``pooling``), plus a score. An early layer's first token has seen little of
    the text; the mean over its tokens carries more of it to a head on a frozen backbone."""

    def __init__(self, hidden: int, n_out: int, pooling: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, n_out)
        self.score = nn.Linear(hidden, 1)
        self.pooling = pooling

    def features(self, hidden, attention_mask):
        return pooled(hidden, attention_mask, self.pooling)

    def from_features(self, features):
        return self.out(torch.tanh(self.dense(features))), torch.sigmoid(self.score(features)).squeeze(-1)

    def forward(self, hidden, attention_mask):
        return self.from_features(self.features(hidden, attention_mask))


class EmbeddingExitHead(nn.Module):
    """Embedding exit: pooled layer output through a projection initialised to identity."""

    def __init__(self, hidden: int, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.score = nn.Linear(hidden, 1)
        self.pooling, self.normalize = pooling, normalize

    def features(self, hidden, attention_mask):
        return pooled(hidden, attention_mask, self.pooling)

    def from_features(self, features):
        emb = self.proj(features)
        if self.normalize:
            emb = nn.functional.normalize(emb, dim=-1)
        return emb, torch.sigmoid(self.score(features)).squeeze(-1)

    def forward(self, hidden, attention_mask):
        return self.from_features(self.features(hidden, attention_mask))


@dataclass(frozen=True)
class ExitConfig:
    layers: tuple[int, ...]  # 1-based layers with an exit; the last is always the final layer
    head_pooling: str  # what the heads before the last read: the first token or the mean of the tokens

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "head_pooling": self.head_pooling}


class MultiExitModel(nn.Module):
    """The trained model plus exit heads. ``forward_all`` returns every exit's outputs."""

    def __init__(self, encoder: Encoder, layers: list[int] | None = None, head_pooling: str | None = None) -> None:
        """``head_pooling``: ``cls`` or ``mean``; default: ``mean`` for a classifier, the model's own
        pooling for an embedding model."""
        super().__init__()
        info = encoder.info
        if head_pooling is not None and head_pooling not in HEAD_POOLING:
            raise ConfigError(f"unknown head pooling {head_pooling!r}", hint=f"use one of: {', '.join(HEAD_POOLING)}")
        if info.model_type not in SUPPORTED:
            raise ConfigError(f"early exit does not support {info.model_type!r} yet", hint=f"supported: {', '.join(SUPPORTED)}")
        self.encoder = encoder
        self.hf = encoder.module.model
        self.base = self.hf.base_model
        self.n_layers = len(_layers(self.base))
        layers = sorted(set(layers or range(1, self.n_layers + 1)))
        bad = [k for k in layers if not 1 <= k <= self.n_layers]
        if bad:
            raise ConfigError(
                f"exit at layer {bad[0]} does not exist: the model has layers 1..{self.n_layers}",
                hint=f"choose layers between 1 and {self.n_layers}",
            )
        if layers[-1] != self.n_layers:
            layers.append(self.n_layers)  # the model's own head is always the last exit
        self.task = info.task
        # Classifier heads read the mean of the tokens by default: on frozen backbones their early exits scored far
        # higher on dev than first-token heads (MiniLM-L6, layer 1: 87.4 vs 48.8 % FP32, 90.7 vs 81.1 % ternary;
        # bench/results/exits-mean-heads). Embedding heads pool like the model.
        pooling = head_pooling or ("cls" if self.task != "classifier" and info.pooling == "cls" else "mean")
        self.config = ExitConfig(tuple(layers), pooling)
        hidden = self.hf.config.hidden_size
        if self.task == "classifier":
            heads = [ExitHead(hidden, self.hf.config.num_labels, pooling) for _ in layers[:-1]]
            self._init_from_final(heads)
        else:
            heads = [EmbeddingExitHead(hidden, pooling, info.normalize) for _ in layers[:-1]]
        self.heads = nn.ModuleList(heads)
        self.final_score = nn.Identity()  # the last exit always exits
        self.backbone_tuned = False  # set by joint training: save() then writes the backbone too

    def _init_from_final(self, heads: list[ExitHead]) -> None:
        """Start intermediate heads from the trained final head where the shapes match."""
        src = None
        if hasattr(self.hf, "bert") and getattr(self.hf.bert, "pooler", None) is not None:
            src = (self.hf.bert.pooler.dense, self.hf.classifier)
        elif hasattr(self.hf, "classifier") and hasattr(self.hf.classifier, "out_proj"):
            src = (self.hf.classifier.dense, self.hf.classifier.out_proj)
        if src is None:
            return
        for h in heads:
            h.dense.load_state_dict(src[0].state_dict())
            h.out.load_state_dict(src[1].state_dict())

    # -- pieces -------------------------------------------------------------------------

    def embed(self, inputs: dict):
        kwargs = {"input_ids": inputs["input_ids"]}
        if "token_type_ids" in inputs and self.encoder.info.model_type == "bert":
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        return self.base.embeddings(**kwargs)

    def run_layers(self, hidden, attention_mask, start: int, stop: int):
        """Layers start+1..stop (1-based, inclusive)."""
        ext = extended_mask(attention_mask, hidden.dtype)
        for layer in _layers(self.base)[start:stop]:
            out = layer(hidden, ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def final_head(self, hidden, attention_mask):
        """The original model's head on the last layer's output (exactly the trained model)."""
        if self.task == "classifier":
            hf = self.hf
            if hasattr(hf, "bert"):
                pooled = hf.bert.pooler(hidden) if hf.bert.pooler is not None else hidden[:, 0]
                return hf.classifier(hf.dropout(pooled))
            if hasattr(hf, "pre_classifier"):
                x = torch.relu(hf.pre_classifier(hidden[:, 0]))
                return hf.classifier(hf.dropout(x))
            return hf.classifier(hidden)
        info = self.encoder.info
        emb = hidden[:, 0] if info.pooling == "cls" else mean_pool(hidden, attention_mask)
        return nn.functional.normalize(emb, dim=-1) if info.normalize else emb

    def exit_outputs(self, idx: int, hidden, attention_mask) -> dict:
        rep = nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)
        if idx == len(self.config.layers) - 1:
            out = self.final_head(hidden, attention_mask)
            score = torch.ones(hidden.shape[0], dtype=hidden.dtype)
        else:
            out, score = self.heads[idx](hidden, attention_mask)
        return {"output": out, "rep": rep, "score": score}

    def forward_all(self, inputs: dict) -> list[dict]:
        """Every exit's outputs for a batch (calibration and training)."""
        mask = inputs["attention_mask"]
        hidden = self.embed(inputs)
        outs, prev = [], 0
        for i, layer in enumerate(self.config.layers):
            hidden = self.run_layers(hidden, mask, prev, layer)
            outs.append(self.exit_outputs(i, hidden, mask))
            prev = layer
        return outs

    # -- persistence ----------------------------------------------------------------------

    def save(self, out: Path, extra: dict | None = None) -> None:
        """exits.json and exits.pt in ``out``; after joint training also the backbone, in ``out/backbone``."""
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"heads": self.heads.state_dict()}, out / EXITS_WEIGHTS)
        info = self.encoder.info
        meta = {**self.config.to_json(), "source": str(info.path), "source_sha256": info.sha256(), "task": self.task}
        if self.backbone_tuned:
            meta |= {"original": meta["source"], "original_sha256": meta["source_sha256"], **self._save_backbone(out / BACKBONE)}
        meta |= extra or {}
        (out / EXITS_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    def _save_backbone(self, path: Path) -> dict:
        import shutil

        from edgekit.build.checkpoint import inspect
        from edgekit.build.quant import quant_config_of
        from edgekit.build.quant.saving import save_quantized

        src = Path(self.encoder.info.path)
        if quant_config_of(self.hf) is not None:  # a fake-quant backbone: its quantizers and learned scales go along
            save_quantized(self.hf, self.encoder.tokenizer, path, source=src)
        else:
            self.hf.save_pretrained(path)
            self.encoder.tokenizer.save_pretrained(path)
        for side in [*src.glob("[0-9]_*"), src / "modules.json", src / "sentence_bert_config.json"]:  # sentence-transformers pooling
            if side.is_dir():
                shutil.copytree(side, path / side.name, dirs_exist_ok=True)
            elif side.exists():
                shutil.copy2(side, path / side.name)
        info = inspect(path, task=self.task)
        return {"source": str(path), "source_sha256": info.sha256()}


def load_exits(exits_dir: str | Path, model: str | Path | None = None) -> MultiExitModel:
    """An exit-head directory (from ``edgekit exits train``) on its source checkpoint."""
    exits_dir = Path(exits_dir)
    cfg_path = exits_dir / EXITS_CONFIG
    if not cfg_path.exists():
        raise ConfigError(f"{exits_dir}: no {EXITS_CONFIG}, so not an exit-head directory", hint="make one with 'edgekit exits train'")
    meta = json.loads(cfg_path.read_text())
    if model is None and (exits_dir / BACKBONE).is_dir():  # jointly trained: the backbone travels with the heads
        model = exits_dir / BACKBONE
    encoder = load(model or meta["source"])
    if encoder.info.sha256() != meta["source_sha256"]:
        raise ConfigError(
            f"{exits_dir}: heads were trained on another checkpoint than {encoder.info.path}", hint="retrain the exits for this checkpoint"
        )
    # no head_pooling: saved before it existed, when every classifier head read the first token
    pooling = meta.get("head_pooling") or ("cls" if encoder.info.task == "classifier" else None)
    m = MultiExitModel(encoder, meta["layers"], pooling)
    state = torch.load(exits_dir / EXITS_WEIGHTS, map_location="cpu", weights_only=True)
    m.heads.load_state_dict(state["heads"])
    return m.eval()


def copy_head(m: MultiExitModel) -> MultiExitModel:
    return copy.deepcopy(m)

"""Distillation: a teacher, a student and a loss config, apart from any quantizer.

Losses (each weighted in :class:`DistillConfig`; 0 turns one off):
- ``logits``: KD on classifier logits, KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton et al.).
- ``hidden``: MSE of hidden states (embedding output + every layer), padding masked (TinyBERT,
  TernaryBERT, BiT).
- ``attention``: MSE of attention probabilities per layer, padding masked (TinyBERT/TernaryBERT).
- ``dmd``: BiBERT's Direction-Matching Distillation: for F in {Q, K, V} of every layer and
  head, P_F = F F^T / ||F F^T||, loss ||P_F^s - P_F^t||_F, averaged (Qin et al., ICLR 2022).
- ``embedding``: for embedding models (no labels): MSE + (1 - cosine) of pooled embeddings.
- ``ce``: cross entropy with labels, when the data has labels (optional).
Every loss is zero when student and teacher compute the same function (``ce`` aside).
The weights (:class:`DistillConfig`, ``DEFAULTS`` per method) are torch-free, in
:mod:`edgekit.build.quant.config`.

:class:`Capture` records Q/K/V, attention maps and hidden states with forward hooks, the
same way for a float Hugging Face model and a quantized one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from edgekit.build.quant.config import DISTILL_DEFAULTS, DistillConfig
from edgekit.build.quant.layout import get, layout_of
from edgekit.build.quant.modules import QuantSelfAttention
from edgekit.errors import ConfigError

DEFAULTS = DISTILL_DEFAULTS  # the paper's loss weights per method (torch-free, in config)


class Capture:
    """Context manager recording a model's internals during its forward passes.

    ``records``: ``hidden`` (list: embeddings output, then each layer), ``attention`` (per
    layer, B x H x L x L), ``q``/``k``/``v`` (per layer, B x L x hidden, before quantization).
    """

    def __init__(self, model, needs: set[str]) -> None:
        self.model, self.needs = model, set(needs)
        self.records: dict[str, list] = {}
        self._handles: list = []

    def clear(self) -> None:
        self.records = {k: [] for k in ("hidden", "attention", "q", "k", "v")}

    def _hook(self, key: str, index: int | None = None):
        def hook(module, inputs, output):
            out = output[index] if index is not None and isinstance(output, tuple) else output
            if isinstance(out, tuple):
                out = out[0]
            self.records[key].append(out)

        return hook

    def __enter__(self) -> Capture:
        self.clear()
        base, lay = layout_of(self.model)
        layers = list(get(base, lay.layers))
        hooks = []
        if "hidden" in self.needs:
            hooks.append((get(base, lay.embeddings), self._hook("hidden")))
            hooks += [(layer, self._hook("hidden", 0)) for layer in layers]
        for layer in layers:
            attn = get(layer, lay.attention)
            if "attention" in self.needs:
                if isinstance(attn, QuantSelfAttention):
                    attn.return_probs = True
                hooks.append((attn, self._hook("attention", 1)))
            if "qkv" in self.needs:
                hooks += [(getattr(attn, name), self._hook(key)) for key, name in (("q", lay.q), ("k", lay.k), ("v", lay.v))]
        self._handles = [m.register_forward_hook(h) for m, h in hooks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        base, lay = layout_of(self.model)
        for layer in get(base, lay.layers):
            attn = get(layer, lay.attention)
            if isinstance(attn, QuantSelfAttention):
                attn.return_probs = False


def kd_logits(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    ts = F.log_softmax(t.float() / temperature, -1)
    ss = F.log_softmax(s.float() / temperature, -1)
    return F.kl_div(ss, ts, log_target=True, reduction="batchmean") * temperature**2


def masked_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens: s, t are B x L x D, mask B x L."""
    m = mask.to(s.dtype).unsqueeze(-1)
    return ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]).clamp(min=1.0)


def attention_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of B x H x L x L maps over (real query, real key) pairs."""
    m = mask.to(s.dtype)
    pair = (m[:, :, None] * m[:, None, :]).unsqueeze(1)
    return ((s - t) ** 2 * pair).sum() / (pair.sum() * s.shape[1]).clamp(min=1.0)


def _direction(x: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    x = (x * mask.to(x.dtype).unsqueeze(-1)).view(b, n, heads, d // heads).transpose(1, 2)
    p = x @ x.transpose(-1, -2)
    return p / p.flatten(2).norm(dim=-1).clamp(min=1e-8)[..., None, None]


def dmd(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """BiBERT Direction-Matching Distillation for one of Q, K, V of one layer."""
    diff = _direction(s.float(), mask, heads) - _direction(t.float(), mask, heads)
    return diff.flatten(2).norm(dim=-1).mean()


def _heads(model) -> int:
    cfg = getattr(model, "config", None) or getattr(model, "model", None).config
    return int(getattr(cfg, "num_attention_heads", None) or cfg.n_heads)


def _per_layer(name: str, s: list, t: list, fn) -> torch.Tensor:
    if len(s) != len(t) or not s:
        raise ConfigError(
            f"distill.{name}: student has {len(s)} layers to match, teacher {len(t)}",
            hint=f"set distill.{name}=0 for students of another depth",
        )
    return torch.stack([fn(a, b) for a, b in zip(s, t)]).mean()


def distill_loss(
    cfg: DistillConfig,
    *,
    task: str,
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    student_rec: dict,
    teacher_rec: dict,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    heads: int = 1,
) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts (detached 0-d tensors: read them with ``float`` only when shown, a host sync each) for one batch."""
    parts: dict[str, torch.Tensor] = {}
    if task == "classifier":
        if cfg.logits:
            parts["logits"] = cfg.logits * kd_logits(student_out, teacher_out, cfg.temperature)
        if cfg.ce and labels is not None:
            parts["ce"] = cfg.ce * F.cross_entropy(student_out.float(), labels)
    elif cfg.embedding:
        s, t = student_out.float(), teacher_out.float()
        parts["embedding"] = cfg.embedding * (F.mse_loss(s, t) + (1 - F.cosine_similarity(s, t, dim=-1)).mean())
    mask = attention_mask
    if cfg.hidden:
        parts["hidden"] = cfg.hidden * _per_layer(
            "hidden", student_rec["hidden"], teacher_rec["hidden"], lambda a, b: masked_mse(a.float(), b.float(), mask)
        )
    if cfg.attention:
        parts["attention"] = cfg.attention * _per_layer(
            "attention", student_rec["attention"], teacher_rec["attention"], lambda a, b: attention_mse(a.float(), b.float(), mask)
        )
    if cfg.dmd:
        parts["dmd"] = cfg.dmd * sum(
            _per_layer("dmd", student_rec[k], teacher_rec[k], lambda a, b: dmd(a, b, mask, heads)) for k in ("q", "k", "v")
        )
    if not parts:
        raise ConfigError(
            "distill: every loss weight is 0 for this task", hint="set logits (classifiers) or embedding (embedding models) > 0"
        )
    total = sum(parts.values())
    return total, {k: v.detach() for k, v in parts.items()}


class Distiller:
    """Teacher + student + loss config: ``step_loss(inputs, labels)`` runs both and returns the loss.

    ``student`` may be wrapped (DistributedDataParallel); captures hook the modules inside.
    """

    def __init__(self, teacher, student, cfg: DistillConfig, *, task: str) -> None:
        self.teacher, self.student, self.cfg, self.task = teacher, student, cfg, task
        self.heads = _heads(getattr(student, "module", student))
        inner = getattr(student, "module", student) if type(student).__name__ == "DistributedDataParallel" else student
        self._t_cap = Capture(teacher, cfg.needs)
        self._s_cap = Capture(inner, cfg.needs)

    def __enter__(self) -> Distiller:
        self._t_cap.__enter__()
        self._s_cap.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._t_cap.__exit__(*exc)
        self._s_cap.__exit__(*exc)

    def loss(self, inputs: tuple, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        self._t_cap.clear()
        self._s_cap.clear()
        with torch.no_grad():
            t_out = self.teacher(*inputs)
        s_out = self.student(*inputs)
        return distill_loss(
            self.cfg,
            task=self.task,
            student_out=s_out,
            teacher_out=t_out,
            student_rec=self._s_cap.records,
            teacher_rec=self._t_cap.records,
            attention_mask=attention_mask,
            labels=labels,
            heads=self.heads,
        )

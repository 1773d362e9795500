"""Quantized modules swapped in by :func:`edgekit.build.quant.quantize_`.

- :class:`QuantLinear` (an ``nn.Linear``: same ``weight``/``bias`` names, so the latent float
  weights save and load as a plain Hugging Face checkpoint) with a weight quantizer and an
  input-activation quantizer.
- :class:`QuantEmbedding` (an ``nn.Embedding``) with a per-row weight quantizer.
- :class:`QuantSelfAttention`: self-attention of BERT-family layers with quantized Q, K, V
  and attention probabilities (BiT: elastic {0,1} probabilities; k-bit: unsigned k-bit
  probabilities) or BiBERT's Bi-Attention (a {0,1} map bool(QK^T) in place of softmax).

:func:`apply_parts` gives the parts of a mixed-precision plan (``QuantConfig.part_bits``)
their own weight quantizers, after ``quantize_`` has swapped the modules.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.build.quant.config import QuantConfig
from edgekit.build.quant.layout import WORD_EMBEDDINGS, get, layout_of
from edgekit.build.quant.quantizers import BinaryWeight, ElasticBinary, Int8Weight, LSQActivation, TernaryWeight, bool_ste
from edgekit.errors import ConfigError


def masked(scores: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention scores with the mask applied: a boolean mask (True = keep) or an additive one."""
    if attention_mask is None:
        return scores
    if attention_mask.dtype == torch.bool:
        return scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    return scores + attention_mask.to(scores.dtype)


def weight_quantizer(bits: int, method: str | None, weight: torch.Tensor) -> nn.Module | None:
    if bits >= 32:
        return None
    if bits == 1:
        return BinaryWeight()
    if bits == 8:
        return Int8Weight()
    return TernaryWeight(method or "twn", weight)


def act_quantizer(cfg: QuantConfig, bits: int, *, nonnegative: bool) -> nn.Module | None:
    """Quantizer for an activation of ``bits``; ``nonnegative`` inputs get BiT's {0,1} set."""
    if bits >= 32:
        return None
    method = cfg.activation_method or ("elastic" if bits == 1 else "lsq")
    if bits == 1:
        if method == "sign":  # BiBERT: {-1,+1} for every activation, scaled
            return ElasticBinary(two_set=False, learn_beta=False)
        return ElasticBinary(two_set=nonnegative, learn_beta=True)
    return LSQActivation(bits, signed=not nonnegative, learned=(method == "lsq"))


class QuantLinear(nn.Linear):
    """``nn.Linear`` computing ``linear(quant_a(x), quant_w(W), b)``; the bias stays float."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_quant=None, input_quant=None, device=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device)
        self.weight_quant = weight_quant
        self.input_quant = input_quant

    @classmethod
    def from_float(cls, linear: nn.Linear, cfg: QuantConfig, *, nonnegative_input: bool = False) -> QuantLinear:
        """Wrap ``linear`` (sharing its parameters) with the quantizers ``cfg`` asks for."""
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device="meta",
            weight_quant=weight_quantizer(cfg.weight_bits, cfg.weight_method, linear.weight),
            input_quant=act_quantizer(cfg, cfg.activation_bits, nonnegative=nonnegative_input),
        )
        new.weight = linear.weight
        new.bias = linear.bias
        return new.to(linear.weight.device)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight) if self.weight_quant is not None else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """linear of the codes, then the scales: (x_c W_c^T) * a_x * a_w[row] + b."""
        x_scale = None
        if self.input_quant is not None:
            x, x_scale = self.input_quant.split(x)
        w, w_scale = self.weight_quant.split(self.weight) if self.weight_quant is not None else (self.weight, None)
        y = F.linear(x, w)
        if w_scale is not None:
            y = y * w_scale.reshape(-1)
        if x_scale is not None:
            y = y * x_scale
        return y + self.bias if self.bias is not None else y


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` looking up rows of the quantized table (one scale per row)."""

    @classmethod
    def from_float(cls, emb: nn.Embedding, cfg: QuantConfig) -> QuantEmbedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, device="meta")
        new.weight = emb.weight
        new.weight_quant = weight_quantizer(
            cfg.embedding_bits, cfg.weight_method if cfg.embedding_bits == cfg.weight_bits else None, emb.weight
        )
        return new.to(emb.weight.device)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.quantized_weight(), self.padding_idx)


class QuantSelfAttention(nn.Module):
    """Self-attention of a BERT-family layer with quantized operands.

    Keeps the original projection modules under their original names (``query``/``key``/
    ``value`` or ``q_lin``/``k_lin``/``v_lin``/``out_lin``), so checkpoints keep their keys.
    Returns ``(context, map)`` like the Hugging Face modules; ``map`` is the quantized map,
    or the float softmax of the student's scores while ``return_probs`` is set (distillation).
    Attention dropout is not applied: it would take the probabilities out of their set.
    """

    def __init__(self, orig: nn.Module, names: tuple[str, str, str, str | None], cfg: QuantConfig) -> None:
        super().__init__()
        self.names = names
        for name in names:
            if name is not None:
                setattr(self, name, getattr(orig, name))
        self.head_size = int(orig.attention_head_size)
        self.scaling = float(getattr(orig, "scaling", self.head_size**-0.5))
        self.bi_attention = cfg.bi_attention
        bits = cfg.attention_bits
        self.q_quant = act_quantizer(cfg, bits, nonnegative=False)
        self.k_quant = act_quantizer(cfg, bits, nonnegative=False)
        self.v_quant = act_quantizer(cfg, bits, nonnegative=False)
        self.p_quant = None if cfg.bi_attention else act_quantizer(cfg, bits, nonnegative=True)
        self.return_probs = False

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_size).transpose(1, 2)

    @staticmethod
    def _split(quant, x):
        return quant.split(x) if quant is not None else (x, None)

    @staticmethod
    def _scaled(y, *scales):
        for s in scales:
            if s is not None:
                y = y * s
        return y

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        qn, kn, vn, on = self.names
        q, q_s = self._split(self.q_quant, self._heads(getattr(self, qn)(hidden_states)))
        k, k_s = self._split(self.k_quant, self._heads(getattr(self, kn)(hidden_states)))
        v, v_s = self._split(self.v_quant, self._heads(getattr(self, vn)(hidden_states)))
        # codes first (exact), scales after: bool(scores) at a tie is the same in torch and ORT
        scores = self._scaled(torch.matmul(q, k.transpose(-1, -2)), q_s, k_s) * self.scaling
        scores = masked(scores, attention_mask)
        if self.bi_attention:
            attn, p_s = bool_ste(scores), None  # BiBERT: {0,1} map; masked keys have scores ~ -inf -> 0
        else:
            attn, p_s = self._split(self.p_quant, torch.softmax(scores, dim=-1))
        context = self._scaled(torch.matmul(attn, v), p_s, v_s)
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
        if on is not None:
            context = getattr(self, on)(context)
        second = torch.softmax(scores, dim=-1) if self.return_probs else self._scaled(attn, p_s)
        return context, second


def _same(quant: nn.Module | None, bits: int, method: str) -> bool:
    if quant is None or getattr(quant, "bits", None) != bits:
        return False
    return not isinstance(quant, TernaryWeight) or quant.method == method


def apply_parts(model: nn.Module, config: QuantConfig) -> int:
    """Give each part of ``config.part_bits`` its own weight quantizer, in place (a model ``quantize_``
    has prepared with ``config``); a part that has it already is left as it is. Returns the number of
    quantizers replaced. An unknown part, or one ``quantize_`` did not quantize, is a ConfigError."""
    if not config.part_bits:
        return 0
    base, lay = layout_of(model)
    replaced = 0
    for name, bits in config.part_bits.items():
        try:
            mod = get(base, name)
        except AttributeError:
            mod = None
        embedding = name == f"{lay.embeddings}.{WORD_EMBEDDINGS}"
        if not isinstance(mod, QuantEmbedding if embedding else QuantLinear) or mod.weight_quant is None:
            raise ConfigError(
                f"quant.part_bits: {name!r} is not a quantized {'embedding table' if embedding else 'linear'} of this model",
                hint="parts are the encoder layers' linears and the word embeddings, named as edgekit.build.quant.layout.parts lists them",
            )
        method = config.part_method(bits, embedding=embedding)
        if not _same(mod.weight_quant, bits, method):
            mod.weight_quant = weight_quantizer(bits, method, mod.weight).to(mod.weight.device)
            replaced += 1
    return replaced

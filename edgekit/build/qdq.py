"""Torch modules that export as INT8 QDQ graphs: the lowered form of edgekit's fake-quant modules.

:func:`lower_modules` swaps, in place, every :class:`~edgekit.build.quant.QuantLinear`,
:class:`~edgekit.build.quant.QuantSelfAttention` and :class:`~edgekit.build.quant.QuantEmbedding` for a
module whose ONNX export is ``QuantizeLinear -> DequantizeLinear`` (QDQ) around each
low-bit matmul:

- weights: INT8 codes in {-1, +1} (binary), {-1, 0, +1} (ternary) or [-127, 127] (the 8-bit
  parts of a mixed-precision plan), stored transposed ``[in, out]`` as an int8 initializer,
  ``DequantizeLinear(codes, scale[out], axis=1)``: exactly the trained ``codes * scale``
  (BiBERT/BiT/TWN per-row scales, BitNet's one gamma, absmax per row);
- activations, from the trained quantizers' scales:
  k-bit LSQ/calibrated -> ``QuantizeLinear(x, s)`` (int8 signed, uint8 non-negative; 4 bits
  clip first), BiT/BiBERT binary: {0,1} -> ``QuantizeLinear(Clip(x - beta, 0, alpha), alpha)``
  (uint8), {-1,+1} -> ``(x >= beta) * 2 alpha - alpha`` quantized with scale alpha (int8):
  the trained quantizer's codes exactly, with cheap elementwise ops (a ``Where`` costs ten
  times as much in ONNX Runtime);
- attention: Q, K (already transposed), V and the probabilities (or BiBERT's {0,1} map,
  scale 1) get QDQ, so both attention matmuls are INT8 x INT8 too;
- embeddings with low E bits: ``Gather`` on the int8 code table, then ``Cast * Gather(scale)``
  (the table is never dequantized as a whole).

Integer codes times scales are the fake-quant values exactly, so the graph computes the
trained model's function; what differs is only float rounding order around each integer
matmul (the runtime applies ``a_scale * b_scale`` after an exact int32 sum), which can move a
value that sits within a few ulps of a quantization threshold to the next code.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.build.quant.modules import QuantEmbedding, QuantLinear, QuantSelfAttention, masked
from edgekit.build.quant.quantizers import BinaryWeight, ElasticBinary, Int8Weight, LSQActivation, TernaryWeight
from edgekit.errors import ConfigError

_RANGES = {True: (-128, 127), False: (0, 255)}


class _QDQ(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear with a constant per-tensor scale and zero point 0."""

    @staticmethod
    def forward(ctx, x, scale: float, signed: bool):  # noqa: D102 - ONNX semantics: round half to even, saturate
        lo, hi = _RANGES[signed]
        return torch.clamp(torch.round(x / scale), lo, hi) * scale

    @staticmethod
    def symbolic(g, x, scale: float, signed: bool):  # noqa: D102
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8 if signed else torch.uint8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class _DequantWeight(torch.autograd.Function):
    """DequantizeLinear of int8 codes ``[in, out]`` with one scale per output column."""

    @staticmethod
    def forward(ctx, codes, scale, columns: int):  # noqa: D102
        return codes.float() * scale

    @staticmethod
    def symbolic(g, codes, scale, columns: int):  # noqa: D102
        zero = g.op("Constant", value_t=torch.zeros(columns, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=1)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def qdq(x: torch.Tensor, scale: float, signed: bool) -> torch.Tensor:
    return _QDQ.apply(x, float(scale), bool(signed))


class ActQDQ(nn.Module):
    """The lowered form of one activation quantizer; ``kind`` says which (for reports)."""

    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        if isinstance(quantizer, LSQActivation):
            self.kind = f"{'s' if quantizer.signed else 'u'}{quantizer.bits}"
            self.scale = float(quantizer.scale.detach().abs().clamp(min=1e-8))
            self.signed = bool(quantizer.signed)
            full = (quantizer.qn, quantizer.qp) == _RANGES[self.signed]
            self.clip = None if full else (quantizer.qn * self.scale, quantizer.qp * self.scale)
        elif isinstance(quantizer, ElasticBinary):
            self.kind = "binary01" if quantizer.two_set else "binary+-1"
            self.scale = float(quantizer.alpha.detach().abs().clamp(min=1e-5))
            self.beta = float(quantizer.beta.detach())
            self.two_set = bool(quantizer.two_set)
            self.signed = not self.two_set
        else:
            raise ConfigError(
                f"cannot lower the activation quantizer {type(quantizer).__name__}",
                hint="supported: LSQ/calibrated 4/8-bit, BiT/BiBERT binary",
            )
        if not bool(getattr(quantizer, "initialized", torch.ones(()))):
            raise ConfigError(
                "an activation quantizer was never calibrated (its scale is the initial 1.0)",
                hint="train or calibrate the model before lowering (edgekit quantize)",
            )
        self.quantizer_type = type(quantizer).__name__

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes (as floats) that the runtime's QuantizeLinear produces."""
        lo, hi = _RANGES[self.signed]
        if self.quantizer_type == "LSQActivation":
            if self.clip is not None:
                x = torch.clamp(x, self.clip[0], self.clip[1])
            return torch.clamp(torch.round(x / self.scale), lo, hi)
        if self.two_set:
            return torch.round(torch.clamp(x - self.beta, 0.0, self.scale) / self.scale)
        return (x >= self.beta).to(x.dtype) * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizer_type == "LSQActivation":
            if self.clip is not None:
                x = torch.clamp(x, self.clip[0], self.clip[1])
            return qdq(x, self.scale, self.signed)
        a = self.scale
        if self.two_set:
            # round(clip((x - beta) / a, 0, 1)) == QuantizeLinear(clip(x - beta, 0, a), a): the same
            # division and round-half-to-even, done by the runtime's quantizer
            code = torch.clamp(x - self.beta, 0.0, a)
        else:
            # sign((x - beta) / a) with sign(0) = +1 is x >= beta: {0,1} -> {-a, +a}, exact in float
            code = (x >= self.beta).to(x.dtype) * (2.0 * a) - a
        return qdq(code, self.scale, self.signed)


def _weight_codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [out, in], float32 scale [out]) of a quantized weight."""
    wq = module.weight_quant
    if not isinstance(wq, BinaryWeight | TernaryWeight | Int8Weight):
        raise ConfigError(
            f"cannot lower the weight quantizer {type(wq).__name__}",
            hint="supported: binary (sign), ternary (twn, absmean, absmedian) and 8-bit (absmax) weights",
        )
    with torch.no_grad():
        codes, scale = wq.codes(module.weight.detach().float())
        scale = scale.reshape(-1).expand(codes.shape[0]).contiguous().float()
    limit = Int8Weight.QP if wq.bits == 8 else 1
    if not torch.all((codes == torch.round(codes)) & (codes.abs() <= limit)):
        raise ConfigError(f"{wq.bits}-bit weight codes are not integers in [-{limit}, {limit}]", hint="re-save the quantized checkpoint")
    return codes.to(torch.int8), scale


class LoweredLinear(nn.Module):
    """``matmul(QDQ(x), DQ(codes^T, scale)) + bias``: an INT8 x INT8 matmul in ONNX."""

    def __init__(self, ql: QuantLinear) -> None:
        super().__init__()
        if ql.weight_quant is None:
            raise ConfigError(
                "a quantized linear has full-precision weights",
                hint="lowering needs binary or ternary weights; for 8-bit weights use INT8 PTQ (edgekit ptq)",
            )
        codes, scale = _weight_codes(ql)
        self.register_buffer("codes", codes.t().contiguous())
        self.register_buffer("scale", scale)
        self.bits = ql.weight_quant.bits
        self.bias = ql.bias
        self.input_q = ActQDQ(ql.input_quant) if ql.input_quant is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _exporting():  # what the runtime computes: an exact integer sum, then the scales
            y = torch.matmul(self.input_q.codes(x) if self.input_q is not None else x, self.codes.to(x.dtype)) * self.scale
            y = y * self.input_q.scale if self.input_q is not None else y
            return y + self.bias if self.bias is not None else y
        if self.input_q is not None:
            x = self.input_q(x)
        y = torch.matmul(x, _DequantWeight.apply(self.codes, self.scale, int(self.scale.numel())))
        return y + self.bias if self.bias is not None else y


class LoweredEmbedding(nn.Module):
    """``Cast(Gather(codes, ids)) * Gather(scale, ids)``: only the looked-up rows are dequantized."""

    def __init__(self, qe: QuantEmbedding) -> None:
        super().__init__()
        codes, scale = _weight_codes(qe)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.bits = qe.weight_quant.bits

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codes[ids].float() * self.scale[ids].unsqueeze(-1)


class LoweredSelfAttention(nn.Module):
    """:class:`~edgekit.build.quant.QuantSelfAttention` with QDQ on Q, K^T, V and the probabilities."""

    def __init__(self, qa: QuantSelfAttention) -> None:
        super().__init__()
        self.names = qa.names
        for name in qa.names:
            if name is not None:
                setattr(self, name, getattr(qa, name))
        self.head_size, self.scaling, self.bi_attention = qa.head_size, qa.scaling, qa.bi_attention
        self.q_act, self.k_act, self.v_act = (ActQDQ(q) if q is not None else None for q in (qa.q_quant, qa.k_quant, qa.v_quant))
        self.p_act = ActQDQ(qa.p_quant) if qa.p_quant is not None else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_size).transpose(1, 2)

    @staticmethod
    def _act(quant, x):
        return quant(x) if quant is not None else x

    @staticmethod
    def _matmul(a, qa, b, qb):
        """QDQ(a) @ QDQ(b) in the export; elsewhere the integer sum of the codes, then the scales."""
        if _exporting() or qa is None or qb is None:
            return torch.matmul(qa(a) if qa is not None else a, qb(b) if qb is not None else b)
        return torch.matmul(qa.codes(a), qb.codes(b)) * (qa.scale * qb.scale)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        qn, kn, vn, on = self.names
        q = self._heads(getattr(self, qn)(hidden_states))
        # K is transposed before its QDQ: the DQ must feed the MatMul directly for runtimes to fuse it
        k = self._heads(getattr(self, kn)(hidden_states)).transpose(-1, -2)
        v = self._heads(getattr(self, vn)(hidden_states))
        scores = self._matmul(q, self.q_act, k, self.k_act) * self.scaling
        scores = masked(scores, attention_mask)
        if self.bi_attention:
            attn = (scores >= 0).to(scores.dtype)  # BiBERT's {0,1} map: an exact uint8 code, scale 1
            context = (
                torch.matmul(qdq(attn, 1.0, False), self._act(self.v_act, v))
                if _exporting()
                else torch.matmul(attn, self.v_act.codes(v) if self.v_act is not None else v)
                * (self.v_act.scale if self.v_act is not None else 1.0)
            )
        else:
            context = self._matmul(torch.softmax(scores, dim=-1), self.p_act, v, self.v_act)
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
        if on is not None:
            context = getattr(self, on)(context)
        return context, None


def _set(root: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def lower_modules(model: nn.Module) -> dict[str, int]:
    """Swap the fake-quant modules of ``model`` for their lowered forms, in place.

    Returns counts by kind (``linear``, ``attention``, ``embedding``) and, for the weights, by bits
    (``weight_bits``: ``{"1": n, "2": n, "8": n}``, the lowered matrices of each width)."""
    counts = {"linear": 0, "attention": 0, "embedding": 0}
    bits: dict[str, int] = {}
    for fqn, mod in list(model.named_modules()):
        if isinstance(mod, QuantSelfAttention):
            _set(model, fqn, LoweredSelfAttention(mod))
            counts["attention"] += 1
    for fqn, mod in list(model.named_modules()):
        if isinstance(mod, QuantLinear | QuantEmbedding):
            lowered = LoweredLinear(mod) if isinstance(mod, QuantLinear) else LoweredEmbedding(mod)
            _set(model, fqn, lowered)
            counts["linear" if isinstance(mod, QuantLinear) else "embedding"] += 1
            bits[str(lowered.bits)] = bits.get(str(lowered.bits), 0) + 1
    return {**counts, "weight_bits": dict(sorted(bits.items()))}

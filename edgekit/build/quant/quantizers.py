"""Quantizers: torch modules with straight-through (STE) or learned-scale gradients.

Training runs each quantizer as one ``autograd.Function`` with a hand-written backward: the
straight-through gradient inside the clipping range and the learned-scale gradients of
LSQ/BiT, exactly those of the composite ops (clamp, round-STE, ...) it replaces, in a
fraction of the kernel launches (see "fused training ops" below). Outside training
(no grad, tracing, ONNX export) the very same values are computed with plain ops, so the
exported graph holds ordinary ONNX ops: Greater/Where (sign), Round, Clip, Mul, Div.

Weight quantizers fold to constants at export (``do_constant_folding``): the ONNX file
then holds the quantized weights, whose values are exactly {-a, +a} or {-a, 0, +a} per row.

Implemented from the papers (no code copied):
- :class:`BinaryWeight`: BiBERT / BinaryBERT, ``a_i * sign(w_i)``, ``a_i = mean|w_i|`` per output channel.
- :class:`TernaryWeight`: TWN / TernaryBERT (``delta = 0.7 mean|w|``, statistical or learned scale)
  and BitNet b1.58 (``RoundClip(w / gamma, -1, 1) * gamma`` with gamma = mean|w| or median|w|).
- :class:`Int8Weight`: 8-bit weights of a mixed-precision plan, symmetric per output channel,
  ``s_i = max|w_i| / 127``, codes ``round(w / s_i)`` in [-127, 127] (INT8 post-training style).
- :class:`ElasticBinary`: BiT elastic binary activation ``alpha * round(clip((x - beta)/alpha, 0, 1))``
  for non-negative inputs ({0, alpha}) and ``alpha * sign((x - beta)/alpha)`` otherwise ({-alpha, +alpha});
  with ``learn_beta=False`` it is BiBERT's scaled sign.
- :class:`LSQActivation`: k-bit activations, LSQ learned step (Esser et al. 2020) or max-calibrated.
- :func:`bool_ste`: BiBERT Bi-Attention's bool(x) = 1 if x >= 0 else 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _plain() -> bool:
    """True where no gradient is wanted: compute with plain, exportable ops."""
    return not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 view of a reduced-precision activation (bf16 autocast): scales and thresholds stay fp32 math."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so values are exactly in {-1, +1}."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _BoolSTE(torch.autograd.Function):
    """1 if x >= 0 else 0; backward: the slope of clip((x + 1) / 2, 0, 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 0.5 * (x.abs() <= 1).to(grad.dtype)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x) if _plain() else _RoundSTE.apply(x)


def bool_ste(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0).to(x.dtype) if _plain() else _BoolSTE.apply(x)


# ----------------------------------------------------------------------------- fused training ops
# Each quantizer's training forward as one autograd node with a hand-written backward. The
# composite form (abs, clamp, div, round-STE, ...) records 10-20 autograd nodes per quantizer
# call, and QAT on a GPU is bound by that launch and dispatch work, not by the arithmetic
# (a 6-layer BERT recorded about 1,260 quantizer ops a step). The backward of each is the exact
# gradient of the composite form it replaces (tests/build/quant/test_quantizers.py checks
# values and gradients against that form).


def _abs_grad(grad: torch.Tensor, p: torch.Tensor, floor: float) -> torch.Tensor:
    """Gradient through ``p.abs().clamp(min=floor)``."""
    return torch.where(p.abs() >= floor, grad * torch.sgn(p), 0.0)


class _TernaryTWN(torch.autograd.Function):
    """TWN codes and per-row scale; codes pass the gradient straight through, the scale
    ``sum(|w| * m) / sum(m)`` (mask ``m = |w| > 0.7 mean|w|`` held fixed) passes ``sign(w) m / sum(m)``."""

    @staticmethod
    def forward(ctx, w):
        a = w.abs()
        mask = (a > 0.7 * a.mean(dim=-1, keepdim=True)).to(w.dtype)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
        q = torch.sign(w) * mask  # sign(0) never meets the mask (|0| > delta is false)
        ctx.save_for_backward(q, count)
        return q, (a * mask).sum(-1, keepdim=True) / count

    @staticmethod
    def backward(ctx, gq, gscale):
        q, count = ctx.saved_tensors
        g = gq if gq is not None else torch.zeros_like(q)
        return g + q * (gscale / count) if gscale is not None else g


class _BinarySign(torch.autograd.Function):
    """``sign(clamp(w, -1, 1))`` (STE clipped to |w| <= 1) and the per-row scale ``mean|w|``."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return _sign(w), w.abs().mean(dim=-1, keepdim=True)

    @staticmethod
    def backward(ctx, gq, gscale):
        (w,) = ctx.saved_tensors
        g = gq * (w.abs() <= 1.0).to(gq.dtype) if gq is not None else torch.zeros_like(w)
        return g + torch.sgn(w) * (gscale / w.shape[-1]) if gscale is not None else g


class _UniformSTE(torch.autograd.Function):
    """Codes of ``u = (x - beta) / s`` clipped to [lo, hi] and rounded (or signed, ``use_sign``),
    with the straight-through gradient inside the clip; ``s = |p|.clamp(min=floor)`` is returned too,
    and every gradient reaching ``p`` is multiplied by ``grad_mult`` (LSQ's step-size scaling).
    ``beta`` is None (LSQ) or a scalar tensor (BiT's elastic offset)."""

    @staticmethod
    def forward(ctx, x, p, beta, lo: float, hi: float, floor: float, grad_mult: float, use_sign: bool):
        s = p.abs().clamp(min=floor)
        xw = _wide(x)
        u = ((xw - beta) if beta is not None else xw) / s
        c = u.clamp(lo, hi)
        q = torch.where(c >= 0, 1.0, -1.0) if use_sign else torch.round(c)
        ctx.save_for_backward(u, c, s, p)
        ctx.meta = (floor, grad_mult, x.dtype, beta is not None and beta.requires_grad)
        return q, s

    @staticmethod
    def backward(ctx, gq, gs):
        u, c, s, p = ctx.saved_tensors
        floor, grad_mult, dtype, beta_grad = ctx.meta
        gu = torch.where(c == u, gq, 0.0) if gq is not None else torch.zeros_like(u)  # inside the clip range
        gx = (gu / s).to(dtype) if ctx.needs_input_grad[0] else None
        gp = gbeta = None
        if ctx.needs_input_grad[1]:
            g_s = torch.vdot(gu.reshape(-1), u.reshape(-1)).neg_().div_(s)
            if gs is not None:
                g_s += gs
            gp = _abs_grad(g_s * grad_mult, p, floor)
        if beta_grad:
            gbeta = gu.sum().neg_().div_(s)
        return gx, gp, gbeta, None, None, None, None, None


class Quantizer(nn.Module):
    """Base of every quantizer: ``split(x) -> (codes, scale)``, ``forward(x) = codes * scale``.

    Codes are small integers ({-1,+1}, {0,1}, {-1,0,+1}, k-bit), so a matmul of codes is
    exact in float32 whatever the summation order (torch and ONNX Runtime agree bit for
    bit, even at a threshold), and the scales are applied after it, as integer kernels do.
    ``scale`` is None where the input passes through (calibration pass).
    """

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = self.split(x)
        return codes if scale is None else codes * scale


# ----------------------------------------------------------------------------- weights


class BinaryWeight(Quantizer):
    """BiBERT / BinaryBERT binary weights: ``mean|w_i| * sign(w_i)`` per output channel (row)."""

    bits = 1

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes in {-1, +1} and the per-row scale."""
        return _sign(w), w.abs().mean(dim=-1, keepdim=True)

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scale) with codes * scale = the quantized weight; STE clipped to |w| <= 1."""
        if not _plain():
            return _BinarySign.apply(w)
        return _sign(w.clamp(-1.0, 1.0)), w.abs().mean(dim=-1, keepdim=True)


class TernaryWeight(Quantizer):
    """Ternary weights, values {-a, 0, +a}.

    ``twn``: TWN / TernaryBERT, threshold delta = 0.7 mean|w| per row and scale a = mean of
    |w| above it; ``twn-learned``: the same codes, a learned per-row scale initialised
    from that statistic (TernaryBERT's LSQ-style variant); ``absmean`` / ``absmedian``:
    BitNet b1.58, gamma = mean|w| (or median|w|) over the whole matrix,
    w_q = gamma * RoundClip(w / gamma, -1, 1).
    """

    bits = 2

    def __init__(self, method: str = "twn", weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if method not in ("twn", "twn-learned", "absmean", "absmedian"):
            raise ValueError(f"unknown ternary method {method!r}")
        self.method = method
        if method == "twn-learned":
            rows = weight.shape[0] if weight is not None else 1
            init = self._twn(weight.detach())[1] if weight is not None else torch.ones(rows, 1)
            self.scale = nn.Parameter(init.clone().float())

    @staticmethod
    def _twn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = 0.7 * w.abs().mean(dim=-1, keepdim=True)
        mask = (w.abs() > delta).to(w.dtype)
        scale = (w.abs() * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        return _sign(w) * mask, scale

    def _gamma(self, w: torch.Tensor) -> torch.Tensor:
        a = w.abs()
        if self.method == "absmean":
            g = a.mean()
        else:  # lower median, as torch.median; sort exports to ONNX (TopK), aten::median does not
            flat = a.flatten()
            g = torch.sort(flat)[0][(flat.numel() - 1) // 2]
        return g.clamp(min=1e-8)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method in ("twn", "twn-learned"):
            q, scale = self._twn(w)
            return q, (self.scale.abs() if self.method == "twn-learned" else scale)
        g = self._gamma(w)
        return torch.round((w / g).clamp(-1, 1)), g.reshape(1, 1).expand(w.shape[0], 1)

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method in ("twn", "twn-learned"):
            q, scale = self._twn(w) if _plain() else _TernaryTWN.apply(w)  # STE: identity gradient to the latent weights
            return q, (self.scale.abs() if self.method == "twn-learned" else scale)
        g = self._gamma(w)
        return round_ste((w / g).clamp(-1.0, 1.0)), g.reshape(1, 1)


class Int8Weight(Quantizer):
    """8-bit weights: ``s_i * round(w_i / s_i)`` with ``s_i = max|w_i| / 127`` per output channel (row).

    The scale follows the latent weights (no learned parameter); the gradient passes straight
    through to them."""

    bits = 8
    QP = 127

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        return (w.detach().abs().amax(dim=-1, keepdim=True) / self.QP).clamp(min=1e-8)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes in [-127, 127] and the per-row scale."""
        s = self._scale(w)
        return torch.round(w / s).clamp(-self.QP, self.QP), s

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._scale(w)
        return round_ste((w / s).clamp(-self.QP, self.QP)), s


# ----------------------------------------------------------------------------- activations


class _ActQuantizer(Quantizer):
    """Activation quantizer with data-initialised scales.

    Until initialised, a forward with ``observing`` set collects statistics and returns
    its input unchanged (a calibration pass); :meth:`finish_observing` sets the scales.
    An uninitialised quantizer met in training initialises itself from that batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self.observing = False
        self._stats: list[torch.Tensor] = []
        self._ready: bool | None = False  # host copy of ``initialized`` (None: unknown, read the buffer once)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = None

    def _is_ready(self) -> bool:
        """``bool(initialized)`` without a device sync on every forward (a GPU sync per quantizer stalls training)."""
        if self._ready is None or not self._ready:
            self._ready = bool(self.initialized)
        return self._ready

    def _statistic(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _init_from(self, stat: torch.Tensor) -> None:
        raise NotImplementedError

    def finish_observing(self) -> None:
        if self._stats and not bool(self.initialized):
            self._init_from(torch.stack(self._stats).mean(0))
            self.initialized.fill_(1)
            self._ready = True
        self._stats = []
        self.observing = False

    def _maybe_init(self, x: torch.Tensor) -> bool:
        """True if ``x`` should pass through unquantized (calibration pass)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or self._is_ready():
            return False
        with torch.no_grad():
            stat = self._statistic(x.detach().float())
        if self.observing:
            self._stats.append(stat)
            return True
        self._init_from(stat)
        self.initialized.fill_(1)
        self._ready = True
        return False


class ElasticBinary(_ActQuantizer):
    """BiT elastic binary activation (and BiBERT's scaled sign with ``learn_beta=False``).

    two_set=True (non-negative inputs: attention probabilities, post-GELU):
        x_b = alpha * round(clip((x - beta) / alpha, 0, 1))  -> values {0, alpha}
    two_set=False:
        x_b = alpha * sign((x - beta) / alpha)  -> values {-alpha, +alpha}, STE inside |.| <= 1
    alpha, beta are learned (scalars per tensor); alpha starts at mean|x| (2 mean|x| for
    two_set), beta at 0.
    """

    bits = 1

    def __init__(self, two_set: bool, learn_beta: bool = True) -> None:
        super().__init__()
        self.two_set = two_set
        self.alpha = nn.Parameter(torch.ones(()))
        if learn_beta:
            self.beta = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("beta", torch.zeros(()))

    def _statistic(self, x):
        return x.abs().mean()

    def _init_from(self, stat):
        with torch.no_grad():
            self.alpha.fill_(max(float(stat) * (2.0 if self.two_set else 1.0), 1e-4))

    def split(self, x: torch.Tensor):
        if self._maybe_init(x):
            return x, None
        lo = 0.0 if self.two_set else -1.0
        if not _plain():
            return _UniformSTE.apply(x, self.alpha, self.beta, lo, 1.0, 1e-5, 1.0, not self.two_set)
        alpha = self.alpha.abs().clamp(min=1e-5)
        u = ((_wide(x) - self.beta) / alpha).clamp(lo, 1.0)
        return (torch.round(u) if self.two_set else _sign(u)), alpha


class LSQActivation(_ActQuantizer):
    """k-bit activations, x_q = s * round(clip(x / s, Qn, Qp)).

    learned=True: LSQ (Esser et al., ICLR 2020), s learned with gradient scale
    1/sqrt(N * Qp), initialised to 2 mean|x| / sqrt(Qp). learned=False: calibrated,
    s = max|x| / Qp from the calibration batches, then fixed. Unsigned (non-negative
    inputs such as attention probabilities) uses [0, 2^k - 1], signed [-2^(k-1), 2^(k-1) - 1].
    """

    def __init__(self, bits: int, signed: bool = True, learned: bool = True) -> None:
        super().__init__()
        self.bits, self.signed, self.learned = bits, signed, learned
        self.qn = -(2 ** (bits - 1)) if signed else 0
        self.qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        if learned:
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.ones(()))

    def _statistic(self, x):
        return x.abs().mean() if self.learned else x.abs().amax()

    def _init_from(self, stat):
        value = 2 * float(stat) / math.sqrt(self.qp) if self.learned else float(stat) / self.qp
        with torch.no_grad():
            self.scale.fill_(max(value, 1e-6))

    def split(self, x: torch.Tensor):
        if self._maybe_init(x):
            return x, None
        if not _plain():
            mult = 1.0 / math.sqrt(x.numel() * self.qp) if self.learned else 1.0
            return _UniformSTE.apply(x, self.scale, None, float(self.qn), float(self.qp), 1e-8, mult, False)
        s = self.scale.abs().clamp(min=1e-8)
        return torch.round((_wide(x) / s).clamp(self.qn, self.qp)), s

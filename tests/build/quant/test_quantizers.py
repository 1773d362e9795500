"""edgekit.build.quant.quantizers: values in the expected sets, gradients flow (straight-through)."""

from __future__ import annotations

import pytest
import torch

from edgekit.build.quant.quantizers import BinaryWeight, ElasticBinary, LSQActivation, TernaryWeight, bool_ste


def _set(t: torch.Tensor) -> set[float]:
    return {round(float(v), 6) for v in t.detach().flatten().unique()}


def test_binary_weight_is_plus_minus_row_mean():
    w = torch.randn(6, 10, requires_grad=True)
    q = BinaryWeight()(w)
    for row, qrow in zip(w, q):
        a = float(row.detach().abs().mean())
        assert _set(qrow) <= {round(a, 6), round(-a, 6)}
    q.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["twn", "twn-learned", "absmean", "absmedian"])
def test_ternary_weight_values(method):
    torch.manual_seed(0)
    w = torch.randn(5, 40, requires_grad=True)
    tq = TernaryWeight(method, w.detach())
    q = tq(w)
    codes, scale = tq.split(w)
    assert _set(codes) <= {-1.0, 0.0, 1.0} and (codes == 0).any() and (codes != 0).any()
    for qrow, srow in zip(q, scale.detach().expand(5, 1)):
        a = round(float(srow), 6)
        assert _set(qrow) <= {-a, 0.0, a}
    if method == "twn":  # threshold 0.7 mean|w|: codes are zero exactly below it
        delta = 0.7 * w.detach().abs().mean(-1, keepdim=True)
        assert torch.equal(codes.detach() == 0, w.detach().abs() <= delta)
    q.pow(2).sum().backward()
    assert w.grad.abs().sum() > 0
    if method == "twn-learned":
        assert tq.scale.grad is not None and tq.scale.grad.abs().sum() > 0


def test_elastic_binary_two_sets_and_learned_scale_gradients():
    x = torch.rand(4, 8, 16, requires_grad=True)  # non-negative, like attention probabilities
    q01 = ElasticBinary(two_set=True)
    y = q01(x)  # first call initialises alpha from the batch
    a = round(q01.alpha.item(), 6)
    assert _set(y) <= {0.0, a}
    y.sum().backward()
    assert q01.alpha.grad is not None and q01.beta.grad is not None and x.grad.abs().sum() > 0

    z = torch.randn(4, 8, 16, requires_grad=True)
    qpm = ElasticBinary(two_set=False)
    y = qpm(z)
    a = round(qpm.alpha.item(), 6)
    assert _set(y) == {-a, a}
    y.sum().backward()
    assert qpm.alpha.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("bits,signed,learned", [(8, True, True), (4, True, True), (8, False, False), (4, False, True)])
def test_lsq_activation_levels(bits, signed, learned):
    x = (torch.randn(3, 50) if signed else torch.rand(3, 50)).requires_grad_(True)
    quant = LSQActivation(bits, signed=signed, learned=learned)
    y = quant(x)
    codes, s = quant.split(x)
    assert torch.equal(codes, codes.round())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    assert codes.min() >= lo and codes.max() <= hi
    assert torch.allclose(y, codes * s)
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    if learned:
        assert quant.scale.grad is not None


def test_bool_ste_is_zero_one_with_gradient():
    x = torch.randn(20, requires_grad=True)
    y = bool_ste(x)
    assert _set(y) <= {0.0, 1.0}
    assert torch.equal(y, (x >= 0).float())
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_plain_and_ste_paths_agree():
    x = torch.randn(4, 32)
    quant = ElasticBinary(two_set=False)
    with torch.no_grad():
        quant(x)  # init
        plain = quant(x)
    ste = quant(x.clone().requires_grad_(True))
    assert torch.equal(plain, ste.detach())


# ----------------------------------------------------------------------------- fused training ops
# The training path runs each quantizer as one autograd node with a hand-written backward. These
# references are the composite form it replaced (clamp, round/sign with an identity backward,
# LSQ's gradient-scale trick); autograd differentiates them, so they check the hand-written gradients.


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q):
        return q

    @staticmethod
    def backward(ctx, g):
        return g, None


def _ste(x, q):
    return _Identity.apply(x, q.detach())


def _ref_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _ref_ternary(w):
    a = w.abs()
    mask = (a > 0.7 * a.mean(-1, keepdim=True)).to(w.dtype)
    scale = (a * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return _ste(w, _ref_sign(w) * mask), scale


def _ref_binary(w):
    c = w.clamp(-1.0, 1.0)
    return _ste(c, _ref_sign(c)), w.abs().mean(-1, keepdim=True)


def _ref_lsq(x, quant):
    s = quant.scale.abs().clamp(min=1e-8)
    if quant.learned:
        g = 1.0 / (x.numel() * quant.qp) ** 0.5
        s = (s - s * g).detach() + s * g
    u = (x.float() / s).clamp(quant.qn, quant.qp)
    return _ste(u, torch.round(u)), s


def _ref_elastic(x, quant):
    alpha = quant.alpha.abs().clamp(min=1e-5)
    u = (x.float() - quant.beta) / alpha
    if quant.two_set:
        c = u.clamp(0.0, 1.0)
        return _ste(c, torch.round(c)), alpha
    c = u.clamp(-1.0, 1.0)
    return _ste(c, _ref_sign(c)), alpha


def _grads(fn, inputs, seed):
    """Values of fn(*inputs) and the gradients of a fixed random projection of (codes * scale, scale)."""
    for t in inputs:
        t.grad = None
    q, s = fn()
    gen = torch.Generator().manual_seed(seed)
    loss = ((q * s).float() * torch.randn(q.shape, generator=gen)).sum() + (s.float() * torch.randn(s.shape, generator=gen)).sum()
    loss.backward()
    return q.detach(), s.detach(), [None if t.grad is None else t.grad.clone() for t in inputs]


def _assert_same(fused, ref):
    assert torch.equal(fused[0], ref[0])
    torch.testing.assert_close(fused[1], ref[1])
    for a, b in zip(fused[2], ref[2], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.abs().sum() > 0  # the comparison means something: a gradient reached this input
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["twn", "binary"])
def test_fused_weight_quantizers_match_the_composite_form(method):
    w = (torch.randn(8, 24, generator=torch.Generator().manual_seed(1)) * 0.8).requires_grad_(True)
    quant, ref = (TernaryWeight("twn"), _ref_ternary) if method == "twn" else (BinaryWeight(), _ref_binary)
    _assert_same(_grads(lambda: quant.split(w), [w], 0), _grads(lambda: ref(w), [w], 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("bits", "signed", "learned"), [(8, True, True), (8, False, True), (4, True, True), (8, True, False)])
def test_fused_lsq_matches_the_composite_form(bits, signed, learned, dtype):
    x0 = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2)) * 3
    x = (x0.abs() if not signed else x0).to(dtype).requires_grad_(True)
    quant = LSQActivation(bits, signed=signed, learned=learned)
    with torch.no_grad():
        quant.split(x)  # initialises the scale from this batch
        quant.scale.mul_(0.5)  # some inputs clip
    params = [x] + ([quant.scale] if learned else [])
    fused = _grads(lambda: quant.split(x), params, 3)
    assert fused[2][0].dtype == dtype
    _assert_same(fused, _grads(lambda: _ref_lsq(x, quant), params, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("two_set", "learn_beta"), [(True, True), (False, True), (False, False)])
def test_fused_elastic_binary_matches_the_composite_form(two_set, learn_beta, dtype):
    x0 = torch.randn(4, 32, generator=torch.Generator().manual_seed(4))
    x = (x0.abs() if two_set else x0).to(dtype).requires_grad_(True)
    quant = ElasticBinary(two_set=two_set, learn_beta=learn_beta)
    with torch.no_grad():
        quant.split(x)
        quant.alpha.mul_(0.7)
        if learn_beta:
            quant.beta.fill_(0.1)
    params = [x, quant.alpha] + ([quant.beta] if learn_beta else [])
    _assert_same(_grads(lambda: quant.split(x), params, 5), _grads(lambda: _ref_elastic(x, quant), params, 5))

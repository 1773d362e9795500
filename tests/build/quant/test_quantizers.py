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

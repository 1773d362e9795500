"""BinaryAttention (xnor_matmul.cpp): one binary self-attention on packed bits, against numpy.

The reference computes what the lowered graph computes, in float32 (scores from the {-1,+1} codes, softmax,
the {0,1} probability binarizer, the {0,1} x {-1,+1} product, the output binarizer). Softmax's sum and exp
are not the kernel's to the last bit (numpy sums pairwise, the kernel in 16 lanes; exp is the C library's),
so an output bit may differ only in a (query, head) row where some probability lies within a relative 1e-5
of the binarizer's threshold; everywhere else the bits are equal. The AVX-512 and portable paths agree to
the bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.deploy.kernels import xnor

pytestmark = pytest.mark.openvino

NEG = np.float32(np.finfo(np.float32).min)  # the exporter's masked-key value


def _graph(heads: int, d: int, params: np.ndarray, o_mode: str, div: bool, mask_shape: list, qkv: bool = False):
    """One BinaryAttention; ``qkv``: Q, K and V in one input ``q`` (one row: Q's words, K's, V's)."""
    eb = 8 * (-(-heads * d // 64))
    names = ["q"] if qkv else ["q", "k", "v"]
    node = xnor.make_attention_node(
        [*(names * 3 if qkv else names), "mask", "params"], "y", heads=heads, head_dim=d, div=div, o_mode=o_mode, qkv=qkv
    )
    graph = helper.make_graph(
        [node],
        "attention",
        [helper.make_tensor_value_info(n, TensorProto.UINT8, ["B", "S", eb * (3 if qkv else 1)]) for n in names]
        + [helper.make_tensor_value_info("mask", TensorProto.FLOAT, mask_shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["B", "S", eb])],
        [numpy_helper.from_array(params, "params")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(xnor.DOMAIN, 1)])


def _bits(codes: np.ndarray) -> np.ndarray:
    """[..., E] in {0, 1} -> packed u8 [..., 8 ceil(E/64)] (little-endian bits, zero padding)."""
    e = codes.shape[-1]
    pad = np.zeros((*codes.shape[:-1], 64 * -(-e // 64)), np.uint8)
    pad[..., :e] = codes
    return np.packbits(pad, axis=-1, bitorder="little")


def _binarize(x: np.ndarray, mode: str, beta, hi, qscale) -> np.ndarray:
    if mode == "pm1":
        return x >= np.float32(beta)
    return np.minimum(np.maximum(x - np.float32(beta), np.float32(0)), np.float32(hi)) / np.float32(qscale) > np.float32(0.5)


def _reference(q, k, v, mask, params, heads, d, o_mode, div):
    """(output bits [B, S, E] as 0/1, rows [B, heads, S] whose probabilities come within 1e-5 of the threshold)."""
    qk, mul, p_beta, p_hi, p_qs, pv, o_beta, o_hi, o_qs = (np.float32(x) for x in params)
    b, s, _ = q.shape
    split = lambda c: (2 * c.astype(np.int64) - 1).reshape(b, s, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    dot = split(q) @ split(k).transpose(0, 1, 3, 2)
    raw = dot.astype(np.float32) * qk
    score = (raw / mul if div else raw * mul) + np.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), dot.shape)
    e = np.exp(score - score.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True, dtype=np.float32)
    p_bits = _binarize(p, "01", p_beta, p_hi, p_qs)
    edge = p_beta + np.float32(0.5) * p_qs  # where p's bit turns
    close = (np.abs(p - edge) <= np.float32(1e-5) * edge).any(-1)
    out = (p_bits.astype(np.int64) @ split(v)).astype(np.float32) * pv
    o_bits = _binarize(out, o_mode, o_beta, o_hi, o_qs).transpose(0, 2, 1, 3).reshape(b, s, heads * d)
    return o_bits, close


CASES = [  # (batch, seq, heads, head_dim): one word a key and the AVX-512 path; heads across words; 2 words a key; odd sizes
    (2, 5, 3, 32),
    (3, 70, 12, 32),
    (2, 33, 2, 64),
    (2, 40, 5, 24),
    (1, 9, 3, 20),
    (2, 20, 2, 80),
]


@pytest.mark.parametrize("b,s,heads,d", CASES)
@pytest.mark.parametrize("mask_kind", ["none", "padding", "padding-square", "general"])
@pytest.mark.parametrize("o_mode,div,qkv", [("pm1", False, False), ("01", True, False), ("pm1", False, True)])
def test_attention_bits_match_the_float_computation(ov_compile, xnor_lib, monkeypatch, b, s, heads, d, mask_kind, o_mode, div, qkv):
    rng = np.random.default_rng(b * 1000 + s * 10 + d)
    e = heads * d
    codes = {n: rng.integers(0, 2, (b, s, e), dtype=np.uint8) for n in "qkv"}
    mul = np.float32(np.sqrt(d)) if div else np.float32(1 / np.sqrt(d))
    params = np.array([0.5, mul, 0.0, 1.5 / s, 1.5 / s, 0.1, 0.05, 0.0, 1.0], np.float32)
    if o_mode == "01":
        params[6:] = [-0.15, 0.4, 0.4]
    mask = np.zeros((b, 1, 1, s), np.float32)
    lengths = rng.integers(1, s + 1, b)
    lengths[0] = s
    for i, n in enumerate(lengths):
        mask[i, ..., n:] = NEG
    if mask_kind == "none":
        mask[:] = 0
    elif mask_kind == "padding-square":
        mask = np.broadcast_to(mask, (b, 1, s, s)).copy()
    elif mask_kind == "general":  # finite values: the key-by-key path
        mask = np.where(rng.random((b, 1, 1, s)) < 0.3, np.float32(-1.5), mask).astype(np.float32)
    feed = {n: _bits(c) for n, c in codes.items()} | {"mask": mask}
    if qkv:  # one tensor: each row's Q, K and V words in turn
        feed = {"q": np.concatenate([feed.pop(n) for n in "qkv"], axis=-1), "mask": mask}
    want, close = _reference(codes["q"], codes["k"], codes["v"], mask, params, heads, d, o_mode, div)
    results = {}
    for isa in ("default", "portable"):
        if isa == "portable":
            monkeypatch.setenv("EDGEKIT_XNOR_ISA", "portable")
        model = _graph(heads, d, params, o_mode, div, ["B", 1, "S" if mask.shape[2] > 1 else 1, "S"], qkv)
        got = ov_compile(model, f"attention-{isa}.onnx")(feed)[0]
        assert got.shape == (b, s, 8 * -(-e // 64))
        results[isa] = got.copy()
    assert np.array_equal(results["default"], results["portable"])
    got = np.unpackbits(results["default"], axis=-1, bitorder="little")
    assert not got[..., e:].any()  # padding bits stay zero
    differ = (got[..., :e] != want).reshape(b, s, heads, d).any(-1).transpose(0, 2, 1)  # [B, heads, S]
    assert not (differ & ~close).any(), f"{int((differ & ~close).sum())} rows differ away from the threshold"
    assert close.mean() < 0.05 and 0.05 < want.mean() < 0.95  # a meaningful case: few near-ties, bits of both kinds


def test_bad_shapes_are_refused(ov_compile, xnor_lib):
    params = np.array([0.5, 0.2, 0.0, 0.1, 0.1, 0.1, 0.0, 0.0, 1.0], np.float32)
    model = _graph(2, 32, params, "pm1", False, ["B", 1, 1, "S"])
    compiled = ov_compile(model, "attention.onnx")
    q = np.zeros((1, 4, 8), np.uint8)
    with pytest.raises(RuntimeError, match="mask's last dimension"):
        compiled({"q": q, "k": q, "v": q, "mask": np.zeros((1, 1, 1, 5), np.float32)})

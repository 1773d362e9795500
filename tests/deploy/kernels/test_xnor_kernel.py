"""edgekit.deploy.kernels.xnor: build, load, exact integer dot products, the portable fallback, bad libraries."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy.kernels import xnor
from edgekit.errors import TargetError

pytestmark = pytest.mark.openvino


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def _codes(x: np.ndarray, mode: str, beta: float, hi: float, qscale: float) -> np.ndarray:
    """The codes ONNX's QuantizeLinear chain gives (float32 throughout), as int64."""
    x = x.astype(np.float32)
    if mode == "pm1":
        return np.where(x >= np.float32(beta), 1, -1).astype(np.int64)
    d = np.clip(x - np.float32(beta), np.float32(0), np.float32(hi))
    return np.clip(np.round(d / np.float32(qscale)), 0, 255).astype(np.int64)


def test_build_records_hash_and_reuses_cache(xnor_lib):
    assert xnor_lib.name == xnor.LIBRARY and xnor_lib.is_file()
    assert xnor.verify(xnor_lib) == xnor_lib
    mtime = xnor_lib.stat().st_mtime_ns
    assert xnor.build(xnor_lib.parent.parent) == xnor_lib  # same key: the cached build, not a new one
    assert xnor_lib.stat().st_mtime_ns == mtime
    cxx = xnor.compiler()
    assert xnor.cache_key(cxx, "2026.4.1") != xnor.cache_key(cxx, "2026.5.0")  # keyed by the OpenVINO version
    expected = "avx512-vpopcntdq" if "avx512_vpopcntdq" in _cpu_flags() else "portable"
    assert xnor.isa(xnor_lib) == expected
    avail = xnor.availability(xnor_lib.parent.parent)
    assert avail.available and avail.library == xnor_lib and avail.isa == expected


@pytest.mark.parametrize("mode", ["pm1", "01"])
@pytest.mark.parametrize(
    "m,k,n", [(1, 1, 1), (3, 63, 17), (5, 64, 16), (7, 65, 33), (4, 384, 40), (9, 768, 35), (6, 1536, 20), (64, 1000, 300)]
)
def test_integer_dots_are_exact(binary_matmul_model, ov_compile, mode, m, k, n):
    """scale 1, bias 0: the output is the integer dot product itself, for K off multiples of 64 too, and for the K
    the AVX-512 path unrolls (384, 768, 1536: 6, 12, 24 words) with row counts off its 4-row tiles."""
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.choice(np.array([-1, 1], np.int8), size=(n, k))
    beta, hi, qscale = (0.1, 0.0, 1.0) if mode == "pm1" else (0.1, 0.7, 0.7)
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = ov_compile(binary_matmul_model(w, np.ones(n), np.zeros(n), [beta, hi, qscale], mode))(x)[0]
    want = _codes(x, mode, beta, hi, qscale) @ w.T.astype(np.int64)
    assert np.array_equal(got, want.astype(np.float32))
    assert np.abs(want).max() <= k  # exactly representable in float32


@pytest.mark.parametrize("mode", ["pm1", "01"])
def test_thresholds_and_scaling_match_the_int8_graph(binary_matmul_model, ov_compile, mode):
    """Values exactly at the threshold (x = beta -> +1; clip(x - beta) / qscale = 0.5 -> 0, half to even),
    at and above the clip; then dot * scale + bias rounded twice, as numpy float32 does."""
    rng = np.random.default_rng(7)
    k, n = 130, 50
    beta, hi, qscale = np.float32(-0.25), np.float32(0.75), np.float32(0.75)
    x = rng.standard_normal((9, k)).astype(np.float32)
    x[0, :40] = beta
    x[1, :40] = beta + np.float32(0.375)  # exactly half a step above the threshold
    x[2, :40] = np.nextafter(beta + np.float32(0.375), np.float32(10))
    x[3, :40] = beta + hi + 1
    w = rng.choice(np.array([-1, 1], np.int8), size=(n, k))
    scale = (rng.random(n) * 0.01).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    if mode == "01":
        assert (np.clip(x - beta, 0, hi) / qscale == np.float32(0.5)).any()  # the tie really occurs
    got = ov_compile(binary_matmul_model(w, scale, bias, [beta, hi, qscale], mode))(x)[0]
    dots = _codes(x, mode, float(beta), float(hi), float(qscale)) @ w.T.astype(np.int64)
    want = dots.astype(np.float32) * scale + bias
    assert np.array_equal(got, want)


def test_forced_portable_path_gives_the_same_result(binary_matmul_model, ov_compile, xnor_lib, monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.choice(np.array([-1, 1], np.int8), size=(300, 1000))
    x = rng.standard_normal((70, 1000)).astype(np.float32)  # large enough for the threaded path
    scale, bias = rng.random(300).astype(np.float32), rng.random(300).astype(np.float32)
    results = {}
    for isa in ("default", "portable"):
        if isa == "portable":
            monkeypatch.setenv("EDGEKIT_XNOR_ISA", "portable")
            assert xnor.isa(xnor_lib) == "portable"
        for mode in ("pm1", "01"):
            results[isa, mode] = ov_compile(binary_matmul_model(w, scale, bias, [0.05, 0.5, 0.5], mode), f"{isa}-{mode}.onnx")(x)[0].copy()
    for mode in ("pm1", "01"):
        assert np.array_equal(results["default", mode], results["portable", mode])


def _two_linears(w1, s1, b1, w2, s2, b2, mode2: str, params2, *, ge=None, le=None):
    """X -> BinaryMatMul(w1) -> BinaryMatMul(w2, binarizing with ``mode2``/``params2``) -> Y: as floats, or (``ge``,
    ``le`` given) joined by packed bits."""
    from onnx import TensorProto, helper, numpy_helper

    (n1, k), n2 = w1.shape, w2.shape[0]
    bits = ge is not None
    arrays = {
        "W1": xnor.pack_weights(w1),
        "S1": ge if bits else s1,
        "B1": le if bits else b1,
        "P1": np.array([0.0, 0.0, 1.0], np.float32),
        "W2": xnor.pack_weights(w2),
        "S2": s2,
        "B2": b2,
        "P2": np.asarray(params2, np.float32),
    }
    nodes = [
        xnor.make_node(["X", "W1", "S1", "B1", "P1"], "H", n=n1, k=k, mode="pm1", y_bits=bits),
        xnor.make_node(["H", "W2", "S2", "B2", "P2"], "Y", n=n2, k=n1, mode=mode2, x_bits=bits),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n2])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(xnor.DOMAIN, 1)])


@pytest.mark.parametrize("isa", ["default", "portable"])
@pytest.mark.parametrize("mode2", ["pm1", "01"])
@pytest.mark.parametrize("m,k,n1,n2", [(3, 63, 70, 17), (70, 200, 130, 40), (5, 64, 64, 16)])
def test_packed_bits_between_two_matmuls_give_the_same_result(ov_compile, xnor_lib, monkeypatch, isa, mode2, m, k, n1, n2):
    """The first matmul's y_bits output (thresholds from rewrite.bit_thresholds) read by the second as x_bits: the
    same output as the float hand-over, for widths off multiples of 16 and 64 (padding bits must stay zero)."""
    from edgekit.deploy.kernels.rewrite import bit_thresholds

    if isa == "portable":
        monkeypatch.setenv("EDGEKIT_XNOR_ISA", "portable")
    rng = np.random.default_rng(m + k + n1)
    w1, w2 = (rng.choice(np.array([-1, 1], np.int8), size=s) for s in ((n1, k), (n2, n1)))
    s1 = (rng.standard_normal(n1) * 0.05).astype(np.float32)
    b1, s2, b2 = (rng.standard_normal(n).astype(np.float32) for n in (n1, n2, n2))
    params2 = (0.1, 0.0, 1.0) if mode2 == "pm1" else (-0.2, 0.6, 0.6)
    ge, le = bit_thresholds(s1, b1, k, False, mode2, params2)
    x = rng.standard_normal((m, k)).astype(np.float32)
    apart = ov_compile(_two_linears(w1, s1, b1, w2, s2, b2, mode2, params2), f"apart-{isa}.onnx")(x)[0]
    joined = ov_compile(_two_linears(w1, s1, b1, w2, s2, b2, mode2, params2, ge=ge, le=le), f"joined-{isa}.onnx")(x)[0]
    assert np.array_equal(joined, apart)
    assert np.unique(apart).size > 1


@pytest.mark.parametrize("isa", ["default", "portable"])
@pytest.mark.parametrize("mode", ["pm1", "01"])
@pytest.mark.parametrize("m", [3, 90])
def test_sections_binarize_the_input_each_with_its_own_params(binary_matmul_model, ov_compile, xnor_lib, monkeypatch, isa, mode, m):
    """One BinaryMatMul of 3 sections (a layer's Q, K, V: one input, three binarizers) gives each section what a
    matmul of its own gives: floats, and bits by thresholds."""
    from onnx import TensorProto, helper, numpy_helper

    if isa == "portable":
        monkeypatch.setenv("EDGEKIT_XNOR_ISA", "portable")
    rng = np.random.default_rng(m)
    k, n = 100, 48
    w = [rng.choice(np.array([-1, 1], np.int8), size=(n, k)) for _ in range(3)]
    scale, bias = rng.random(3 * n).astype(np.float32), rng.standard_normal(3 * n).astype(np.float32)
    params = [[0.1, 0.0, 1.0], [-0.2, 0.0, 1.0], [0.3, 0.0, 1.0]] if mode == "pm1" else [[0.1, 0.5, 0.5], [-0.2, 0.7, 0.7], [0.0, 0.4, 0.3]]
    x = rng.standard_normal((m, k)).astype(np.float32)
    apart = np.concatenate(
        [
            ov_compile(binary_matmul_model(w[i], scale[i * n : (i + 1) * n], bias[i * n : (i + 1) * n], params[i], mode), f"s{i}.onnx")(x)[
                0
            ]
            for i in range(3)
        ],
        axis=1,
    )
    arrays = {"W": xnor.pack_weights(np.concatenate(w)), "S": scale, "B": bias, "P": np.array(params, np.float32).reshape(-1)}
    graph = helper.make_graph(
        [xnor.make_node(["X", "W", "S", "B", "P"], "Y", n=3 * n, k=k, mode=mode)],  # 9 params: 3 sections
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", 3 * n])],
        [numpy_helper.from_array(v, name) for name, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(xnor.DOMAIN, 1)])
    assert np.array_equal(ov_compile(model, "sections.onnx")(x)[0], apart)
    assert not np.array_equal(apart[:, :n], ov_compile(binary_matmul_model(w[0], scale[:n], bias[:n], params[1], mode), "other.onnx")(x)[0])


def test_tampered_or_missing_library_is_refused(xnor_lib, tmp_path):
    import openvino as ov

    copy = tmp_path / xnor.LIBRARY
    shutil.copy(xnor_lib, copy)
    shutil.copy(xnor_lib.with_name(xnor.LIBRARY + ".sha256"), tmp_path)
    assert xnor.verify(copy) == copy
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(TargetError, match="does not match its recorded sha256"):
        xnor.load(ov.Core(), copy)
    copy.with_name(xnor.LIBRARY + ".sha256").unlink()
    with pytest.raises(TargetError, match="has no .*sha256"):
        xnor.verify(copy)
    with pytest.raises(TargetError, match="not found"):
        xnor.load(ov.Core(), tmp_path / "missing" / xnor.LIBRARY)


def test_no_compiler_makes_the_kernel_unavailable_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    avail = xnor.availability(tmp_path / "cache")
    assert not avail.available and avail.library is None
    assert "no C++ compiler" in avail.reason and "apt-get install g++" in avail.reason
    with pytest.raises(TargetError, match="1-bit kernel unavailable"):
        xnor.build(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_compile_failure_is_reported_with_the_compiler_message(monkeypatch, tmp_path):
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\necho 'fatal error: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(TargetError, match="could not compile xnor_matmul.cpp .*fatal error: boom"):
        xnor.build(tmp_path / "cache")


def test_pack_weights_layout():
    codes = -np.ones((17, 65), np.int8)
    codes[16, 64] = 1  # output 16 (block 1, lane 0), input 64 (word 1, bit 0)
    codes[3, 5] = 1  # output 3 (block 0, lane 3), input 5 (word 0, bit 5)
    packed = xnor.pack_weights(codes)
    assert packed.shape == (2, 2, 128) and packed.dtype == np.uint8
    words = packed.view("<u8").reshape(2, 2, 16)
    assert words[1, 1, 0] == 1 and words[0, 0, 3] == 1 << 5
    assert int(np.count_nonzero(words)) == 2
    with pytest.raises(ValueError, match="codes in"):
        xnor.pack_weights(np.zeros((2, 2), np.int8))

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
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 63, 17), (5, 64, 16), (7, 65, 33), (4, 384, 40), (64, 1000, 300)])
def test_integer_dots_are_exact(binary_matmul_model, ov_compile, mode, m, k, n):
    """scale 1, bias 0: the output is the integer dot product itself, for K off multiples of 64 too."""
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

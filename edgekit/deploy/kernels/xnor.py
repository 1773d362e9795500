"""The 1-bit OpenVINO extension (``BinaryMatMul``, ``BinaryAttention``): build it with the system C++ compiler,
load it, pack weights.

The C++ source (``xnor_matmul.cpp``, shipped beside this module) is compiled against the headers and
libraries the ``openvino`` wheel ships, into a cache directory keyed by the source's hash, the compiler's
version, the flags and the OpenVINO version; a later build with the same key reuses the library. Each
library is stored with its sha256 and checked at load, so a truncated or altered file is refused
instead of being handed to ``dlopen``. Without a compiler or headers the kernel is *unavailable*:
:func:`availability` says why and :func:`build` raises :class:`~edgekit.errors.TargetError`, never a crash.

Environment (read in :mod:`edgekit.env`): ``CXX`` picks the compiler (default ``g++``, then ``c++``,
``clang++``); ``XDG_CACHE_HOME`` moves the default cache (``~/.cache/edgekit/kernels``);
``EDGEKIT_XNOR_ISA=portable`` makes the loaded kernel skip its AVX-512 VPOPCNTDQ path (read by the
library itself at each call, so it is documented there and in :func:`edgekit.env.cxx`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import env
from edgekit.deploy.artifact import sha256_file
from edgekit.deps import require
from edgekit.errors import MissingDependency, TargetError

SOURCE = Path(__file__).with_name("xnor_matmul.cpp")
DOMAIN = "edgekit.xnor"  # ONNX domain of the op in rewritten graphs
OP_TYPE = "BinaryMatMul"
ATTENTION_OP = "BinaryAttention"
BLOCK = 16  # outputs per packed weight block (xnor_matmul.cpp: kBlock)
LIBRARY = "libedgekit_xnor.so"
# -ffp-contract=off: float(dot) * scale + bias rounded twice, as the INT8 kernels and numpy do (no FMA).
# No -march: the AVX-512 path is compiled per function and chosen at run time, so the library runs on any x86-64.
FLAGS = ("-O3", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared", "-fvisibility=hidden")
HINT = "install a C++ compiler (apt-get install g++) and the openvino wheel (pip install 'edgekit[openvino]'), or compile without the 1-bit kernel"


@dataclass(frozen=True)
class Availability:
    """Whether the kernel can be used here; ``reason`` says why not (or which library and ISA)."""

    available: bool
    reason: str
    library: Path | None = None
    isa: str | None = None


def _unavailable(reason: str, hint: str = HINT) -> TargetError:
    return TargetError(f"1-bit kernel unavailable: {reason}", hint=hint)


def default_cache_dir() -> Path:
    return env.kernel_cache_dir()


def compiler() -> str:
    """Path of the C++ compiler to use; :class:`TargetError` if there is none."""
    wanted = env.cxx()
    for name in [wanted] if wanted else ["g++", "c++", "clang++"]:
        path = shutil.which(name)
        if path:
            return path
    raise _unavailable(f"no C++ compiler found ({'CXX=' + wanted if wanted else 'g++, c++, clang++'} not on PATH)")


def openvino_layout() -> tuple[str, Path, list[Path]]:
    """(openvino version, include dir, libraries to link) of the installed wheel."""
    try:
        ov = require("openvino", for_="the 1-bit BinaryMatMul kernel")
    except MissingDependency as err:
        raise _unavailable(str(err)) from err
    root = Path(ov.__file__).parent
    include, libs = root / "include", root / "libs"
    if not (include / "openvino" / "op" / "op.hpp").exists():
        raise _unavailable(f"the openvino package at {root} ships no C++ headers (include/openvino/op/op.hpp)")
    found = []
    for pattern in ("libopenvino.so*", "libopenvino_onnx_frontend.so*", "libtbb.so*"):
        matches = sorted(p for p in libs.glob(pattern) if p.is_file())
        if not matches:
            raise _unavailable(f"the openvino package at {root} has no {pattern} in {libs}")
        found.append(matches[0])
    return ov.get_version(), include, found


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise _unavailable(f"the C++ compiler {cxx} does not run: {err}") from err
    return out.splitlines()[0] if out else cxx


def cache_key(cxx: str, ov_version: str) -> str:
    """Hash of everything the library depends on: source, compiler, flags, OpenVINO version."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _compiler_version(cxx).encode(), " ".join(FLAGS).encode(), ov_version.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def openvino_args(include: Path, libs: list[Path], source: Path, out: Path) -> list[str]:
    """The compiler arguments after the flags: the openvino wheel's headers, ``source``, ``-o out``, and its
    libraries linked with their folders as rpath (also used by bench/xnor_tiles.py)."""
    rpath = sorted({str(p.parent.resolve()) for p in libs})
    return [f"-I{include}", str(source), "-o", str(out), *map(str, libs), *(f"-Wl,-rpath,{d}" for d in rpath)]


def build(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Compile the kernel (or reuse the cached build); returns the library's path."""
    if not SOURCE.exists():
        raise _unavailable(f"kernel source {SOURCE} is missing from the installation", hint="reinstall edgekit")
    cxx = compiler()
    ov_version, include, libs = openvino_layout()
    out_dir = Path(cache_dir or default_cache_dir()) / cache_key(cxx, ov_version)
    lib = out_dir / LIBRARY
    if lib.exists() and not force and _recorded_ok(lib):
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / LIBRARY
        cmd = [cxx, *FLAGS, *openvino_args(include, libs, SOURCE, tmp_lib)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            raise _unavailable(f"running {cxx} failed: {err}") from err
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise _unavailable(f"{Path(cxx).name} could not compile {SOURCE.name} (exit {done.returncode}): {tail}")
        digest = sha256_file(tmp_lib)
        os.replace(tmp_lib, lib)
        lib.with_name(LIBRARY + ".sha256").write_text(f"{digest}  {LIBRARY}\n")
    return lib


def _recorded_ok(lib: Path) -> bool:
    record = lib.with_name(lib.name + ".sha256")
    return record.exists() and record.read_text().split()[:1] == [sha256_file(lib)]


def verify(lib: str | Path) -> Path:
    """The library path if it exists and matches its recorded sha256; :class:`TargetError` otherwise."""
    lib = Path(lib)
    if not lib.is_file():
        raise TargetError(f"1-bit kernel library {lib} not found", hint="rebuild it: edgekit.deploy.kernels.xnor.build()")
    record = lib.with_name(lib.name + ".sha256")
    if not record.exists():
        raise TargetError(
            f"1-bit kernel library {lib} has no {record.name} beside it", hint="rebuild it: edgekit.deploy.kernels.xnor.build()"
        )
    if not _recorded_ok(lib):
        raise TargetError(
            f"1-bit kernel library {lib} does not match its recorded sha256 (changed or truncated after the build)",
            hint="delete it and rebuild: edgekit.deploy.kernels.xnor.build(force=True)",
        )
    return lib


def load(core: Any, lib: str | Path | None = None) -> Path:
    """Add the kernel to an ``openvino.Core`` (building it if needed); returns the library used."""
    lib = verify(lib if lib is not None else build())
    try:
        core.add_extension(str(lib))
    except RuntimeError as err:
        raise TargetError(f"OpenVINO refused the 1-bit kernel library {lib}: {str(err).strip().splitlines()[-1]}", hint=HINT) from err
    return lib


def isa(lib: str | Path) -> str:
    """The path the library's kernel takes now: ``avx512-vpopcntdq`` or ``portable``."""
    handle = ctypes.CDLL(str(verify(lib)))
    handle.edgekit_xnor_isa.restype = ctypes.c_char_p
    return handle.edgekit_xnor_isa().decode()


def availability(cache_dir: str | Path | None = None) -> Availability:
    """Build (or find) the kernel; never raises for a missing compiler, headers or a failed build."""
    try:
        lib = build(cache_dir)
        path = isa(lib)
        return Availability(True, f"{lib} ({path})", lib, path)
    except TargetError as err:
        return Availability(False, str(err))


def make_node(
    inputs: list[str], output: str, *, n: int, k: int, mode: str, x_bits: bool = False, y_bits: bool = False, name: str = ""
) -> Any:
    """An ONNX ``BinaryMatMul`` node with every attribute set (the ONNX frontend maps each one; none may be missing).

    ``inputs``: X, packed weights, scale and bias (``y_bits``: the i32 thresholds ge and le), params (3 values a
    section: 3 s values make s equal runs of outputs, each binarizing X with its own)."""
    from onnx import helper

    attrs = {"n": n, "k": k, "mode": mode, "x_bits": int(x_bits), "y_bits": int(y_bits)}
    return helper.make_node(OP_TYPE, inputs, [output], name=name, domain=DOMAIN, **attrs)


def make_attention_node(
    inputs: list[str], output: str, *, heads: int, head_dim: int, div: bool, o_mode: str, qkv: bool = False, name: str = ""
) -> Any:
    """An ONNX ``BinaryAttention`` node. ``inputs``: Q, K, V bits (``qkv``: one tensor of all three, given three
    times), the additive mask, params (xnor_matmul.cpp)."""
    from onnx import helper

    attrs = {"heads": heads, "head_dim": head_dim, "div": int(div), "o_mode": o_mode, "qkv": int(qkv)}
    return helper.make_node(ATTENTION_OP, inputs, [output], name=name, domain=DOMAIN, **attrs)


def pack_weights(codes: np.ndarray) -> np.ndarray:
    """Weight codes ``[N, K]`` in {-1, +1} -> the kernel's packed u8 ``[ceil(N/16), ceil(K/64), 128]``.

    Bit ``b`` of little-endian 64-bit word ``i`` of block ``j``, lane ``l`` is ``codes[16 j + l, 64 i + b] > 0``;
    padding (N up to a multiple of 16, K up to a multiple of 64) is zero bits, which add nothing to the
    XOR/AND popcounts because the activation's padding bits are zero too."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.isin(codes, (-1, 1)).all():
        raise ValueError("pack_weights takes a [N, K] array of codes in {-1, +1}")
    n, k = codes.shape
    kw, nb = -(-k // 64), -(-n // BLOCK)
    bits = np.zeros((nb * BLOCK, kw * 64), np.uint8)
    bits[:n, :k] = codes > 0
    words = np.packbits(bits.reshape(nb * BLOCK, kw, 64), axis=-1, bitorder="little").reshape(nb, BLOCK, kw, 8)
    return np.ascontiguousarray(words.transpose(0, 2, 1, 3)).reshape(nb, kw, BLOCK * 8)

"""Environment variables edgekit reads, all in one place."""

from __future__ import annotations

import os
from pathlib import Path


def debug() -> bool:
    """EDGEKIT_DEBUG=1 shows tracebacks for user errors too (same as ``--debug``)."""
    return os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0", "false")


def default_model_dir() -> str | None:
    """EDGEKIT_DEFAULT_MODEL overrides where ``--model default`` points."""
    return os.environ.get("EDGEKIT_DEFAULT_MODEL") or None


def threads() -> int | None:
    """EDGEKIT_THREADS caps the threads runtimes use (unset: the runtime decides)."""
    value = os.environ.get("EDGEKIT_THREADS")
    return int(value) if value else None


def rank() -> int:
    """RANK, set by torchrun: the process's rank in a multi-GPU run (0 alone, or outside torchrun)."""
    value = os.environ.get("RANK", "0")
    return int(value) if value.strip().isdigit() else 0


def cache_dir() -> Path:
    """XDG_CACHE_HOME (default ``~/.cache``): edgekit's caches live under ``<it>/edgekit``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekit"


def kernel_cache_dir() -> Path:
    """Where native kernels edgekit compiles are cached: ``$XDG_CACHE_HOME/edgekit/kernels``."""
    return cache_dir() / "kernels"


def cxx() -> str | None:
    """CXX names the C++ compiler native kernels are built with (unset: the first of g++, c++, clang++)."""
    return os.environ.get("CXX") or None


def xnor_isa() -> str | None:
    """EDGEKIT_XNOR_ISA=portable makes the 1-bit kernel skip its AVX-512 VPOPCNTDQ path. The kernel
    library reads it itself at each call (``edgekit/deploy/kernels/xnor_matmul.cpp``); this is for reports."""
    return os.environ.get("EDGEKIT_XNOR_ISA") or None

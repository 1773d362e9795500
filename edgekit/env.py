"""Environment variables edgekit reads, all in one place."""

from __future__ import annotations

import os


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

"""The resume state of a training stage: ``OUT/train_state/state.pt`` and its ``state.pt.sha256``.

``state.pt`` holds the student's weights, the optimizer and scheduler state, the step and
the RNG states: tensors and plain values only, so it is read with ``torch.load(...,
weights_only=True)`` and nothing in it can run code. Its sha256 is written to the sidecar
after it (each file written to a temporary name, then renamed); a state whose sidecar is
missing or names another hash is refused before it is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
from pathlib import Path

import torch

from edgekit.build.quant.config import QuantConfig
from edgekit.errors import ArtifactError, ConfigError, TrainingError

STATE_FILE = "state.pt"
HASH_FILE = "state.pt.sha256"


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save_state(state_dir: Path, step: int, student, opt, sched, qcfg: QuantConfig, total: int) -> Path:
    """Write the resume state of ``student`` at ``step``; returns the state file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "total": total,
        "scheme": qcfg.model_dump(),
        "model": student.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    f, side = state_dir / STATE_FILE, state_dir / HASH_FILE
    torch.save(state, _tmp(f))
    with _tmp(f).open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    os.replace(_tmp(f), f)
    _tmp(side).write_text(f"{digest}  {STATE_FILE}\n")  # sha256sum's format: `sha256sum -c` checks it too
    os.replace(_tmp(side), side)
    return f


def read_state(state_dir: Path) -> dict:
    """The state saved by :func:`save_state`, checked against its recorded sha256 before it is unpickled."""
    f, side = state_dir / STATE_FILE, state_dir / HASH_FILE
    hint = f"delete {state_dir} to start over"
    try:
        recorded = side.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise ArtifactError(
            f"{f}: no sha256 recorded for it ({side.name} missing or unreadable); refusing to resume from it", hint=hint
        ) from err
    try:
        data = f.read_bytes()  # hashed and unpickled from the same bytes
    except OSError as err:
        raise TrainingError(f"{f}: cannot resume from it ({err.strerror})", hint=hint) from err
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ArtifactError(
            f"{f}: sha256 differs from the one recorded in {side.name} when it was written; refusing to resume from it", hint=hint
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ArtifactError(f"{f}: holds objects other than tensors and plain values; refusing to resume from it", hint=hint) from err
    except (RuntimeError, EOFError) as err:
        raise TrainingError(f"{f}: cannot resume from it ({str(err).splitlines()[0]})", hint=hint) from err
    if not isinstance(state, dict) or not {"step", "scheme", "model", "optimizer", "scheduler", "rng"} <= set(state):
        raise ArtifactError(f"{f}: not an edgekit training state", hint=hint)
    return state


def load_state(state_dir: Path, student, opt, sched, qcfg: QuantConfig) -> int:
    """Restore ``student``, ``opt``, ``sched`` and the RNGs from ``state_dir``; returns the step it was saved at."""
    state = read_state(state_dir)
    if state["scheme"] != qcfg.model_dump():
        saved = state["scheme"].get("scheme") if isinstance(state["scheme"], dict) else None
        raise ConfigError(
            f"{state_dir / STATE_FILE}: saved for scheme {saved!r}, not {qcfg.scheme!r}", hint="use another --out, or the same scheme"
        )
    student.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def remove_state(state_dir: Path) -> None:
    for name in (STATE_FILE, HASH_FILE):
        (state_dir / name).unlink(missing_ok=True)

"""The target protocol: every runtime edgekit compiles for implements it.

Profiling and eval only ever talk to a :class:`Session`, so every runtime is measured
by the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from edgekit.deploy.artifact import Manifest


def _split_ints(v: Any) -> Any:
    return [int(x) for x in v.replace(" ", "").split(",") if x] if isinstance(v, str) else v


def _check_seq_lens(v: list[int] | None) -> list[int] | None:
    if v is not None and (not v or min(v) < 4):
        raise ValueError("give at least one sequence length, each >= 4")
    return sorted(set(v)) if v is not None else None


# Sequence buckets as a target option: '64,128' or [64, 128] -> sorted, unique, each >= 4.
SeqLens = Annotated[list[int] | None, BeforeValidator(_split_ints), AfterValidator(_check_seq_lens)]


class TargetOptions(BaseModel):
    """Base of every target's options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    threads: int | None = None


@runtime_checkable
class Session(Protocol):
    """A loaded artifact, ready to run. Use as a context manager."""

    input_names: list[str]
    output_names: list[str]

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Target(Protocol):
    name: ClassVar[str]
    runtime: ClassVar[str]  # the Python module it needs
    description: ClassVar[str]
    options_model: ClassVar[type[TargetOptions]]

    def check_available(self) -> None:
        """Raise MissingDependency/TargetError saying why this target cannot run here."""

    def compile(self, onnx_dir: Path, manifest: Manifest, options: TargetOptions, out: Path) -> dict[str, Any]:
        """Write the target's model files into ``out``; return manifest fields to set
        (``model_file``, ``precision``, ``runtime``, ``settings``)."""

    def runs_here(self) -> str | None:
        """None if this machine has the runtime and hardware that run this target's
        artifacts; else why not (the target may still compile here, e.g. a TensorRT plan)."""

    def executable_here(self, manifest: Manifest) -> str | None:
        """None if artifacts of this target run on this machine; else why not (then compile
        writes what it can, skips the parity run, and says so in the manifest)."""

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> Session:
        """Open a compiled artifact for inference."""


def runtime_version(module: Any) -> str:
    return str(getattr(module, "__version__", None) or getattr(module, "get_version", lambda: "?")())

"""The target protocol: every runtime edgekit compiles for implements it.

Profiling and eval only ever talk to a :class:`Session`, so every runtime is measured
by the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.deploy.artifact import Manifest
from edgekit.deploy.devices import DeviceProfile


class TargetOptions(BaseModel):
    """Base of every target's options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    threads: int | None = Field(None, ge=0, description="runtime threads (0: the runtime's own default)")
    # Compile-time autotuning (edgekit.build.tune): on, off, or auto (on for lowered binary/ternary
    # models, off otherwise); the candidates are the target's (tune_candidates below).
    tune: Literal["auto", "on", "off"] = "auto"
    tune_budget_s: float = Field(120.0, gt=0, description="seconds the tuner may spend building and timing candidates")

    @model_validator(mode="after")
    def _one_seq_source(self) -> TargetOptions:
        # Shape-bucketed targets take seq_lens or data (edgekit.deploy.targets.shapes), never both.
        if getattr(self, "seq_lens", None) is not None and getattr(self, "data", None) is not None:
            raise ValueError("give seq_lens or data, not both")
        return self

    @property
    def sequence_buckets(self) -> bool:
        """Whether these options ask for fixed sequence lengths (``seq_lens`` or ``data``; targets that take them)."""
        return getattr(self, "seq_lens", None) is not None or getattr(self, "data", None) is not None

    @property
    def build_precision(self) -> str:
        """The precision these options ask the target to build at: the ``precision`` option, else fp32
        (a target without one compiles the source's own precision)."""
        return str(getattr(self, "precision", "fp32"))


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
    static_shapes: ClassVar[bool]  # every compiled model has a fixed [batch, sequence]: a dynamic export needs seq_lens
    model_suffixes: ClassVar[tuple[str, ...]]  # the model files its artifacts run (first: a finished artifact's)

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        """The options a device profile sets for this target (device name, threads, execution providers...);
        options the user gives take precedence. Raise ConfigError if the profile lacks what the target needs."""

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


def tune_candidates(target: Any, options: TargetOptions, manifest: Manifest) -> list[dict[str, Any]]:
    """The variants compile's autotuner tries for ``target`` (besides the options as given).

    A target offers them with an optional method ``tune_candidates(options, manifest)`` returning
    ``[{"name": ..., "options": {field: value}}, ...]``; a variant that cannot run here (a kernel or
    precision the installed runtime or CPU lacks) carries ``"skip": "why"`` instead of being left
    out, so the manifest says why it was not tried; ``"replaces": [field, ...]`` lets it vary options
    the user set (otherwise fixed). A target without the method has none."""
    hook = getattr(target, "tune_candidates", None)
    return list(hook(options, manifest)) if hook is not None else []


def runtime_version(module: Any) -> str:
    return str(getattr(module, "__version__", None) or getattr(module, "get_version", lambda: "?")())

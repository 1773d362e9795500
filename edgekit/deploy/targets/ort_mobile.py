"""Target ``ort-mobile``: ONNX Runtime's ``.ort`` format for phones and small ARM boards.

``compile`` converts the ONNX model with ONNX Runtime's own tools
(``onnxruntime.tools.convert_onnx_models_to_ort``, optimization style ``Fixed`` by default)
and keeps the ``required_operators.config`` they write: the operator list to build a
minimal ONNX Runtime for the device (``build.sh --minimal_build --include_ops_by_config``).
Input shapes can be fixed first (``seq_lens=128``, one length, or ``data=<texts file>``: the
longest of its p50/p90/max lengths; ``batch``, default 1) with
``onnxruntime.tools.make_dynamic_shape_fixed``, which NNAPI, CoreML and QNN need to take whole graphs. The execution providers a device profile
asks for are recorded and used, in order, wherever they exist; on this machine the
``.ort`` model runs on the CPU provider, so parity and profiling run here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edgekit.deploy import devices
from edgekit.deploy.artifact import Manifest, TensorSpec
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deploy.targets.ort import session_options
from edgekit.deploy.targets.shapes import DataFile, SeqLens, check_reference_fits, plan_seq_lens, run_in_buckets
from edgekit.deps import require
from edgekit.errors import ConfigError, TargetError

MODEL_FILE = "model.ort"
CONFIG_FILE = "required_operators.config"
CPU = "CPUExecutionProvider"
# Compiling EPs that take only the nodes whose shapes are fixed.
STATIC_EPS = ("NnapiExecutionProvider", "CoreMLExecutionProvider", "QNNExecutionProvider")
_PLATFORM = {"aarch64": "arm", "x86_64": "amd64"}


class OrtMobileOptions(TargetOptions):
    seq_lens: SeqLens = Field(None, description="fix the sequence length (one length), for NNAPI/CoreML/QNN")
    data: DataFile = Field(None, description="fix the sequence length to the longest p50/p90/max length of these texts")
    batch: int | None = Field(None, ge=1, description="fixed batch, with seq_lens or data (default 1)")
    device: str | None = Field(None, description="device profile whose onnxruntime execution providers to record")
    execution_providers: list[str] | None = Field(None, description="execution providers, in order (overrides the device's)")
    optimization_style: Literal["Fixed", "Runtime"] = "Fixed"
    target_platform: Literal["arm", "amd64"] | None = Field(None, description="default: the device's arch, else arm")

    @field_validator("execution_providers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [x for x in v.replace(" ", "").split(",") if x] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_shape(self) -> OrtMobileOptions:
        if self.seq_lens is not None and len(self.seq_lens) > 1:
            raise ValueError("ort-mobile fixes one shape: give one sequence length")
        if self.batch is not None and self.seq_lens is None and self.data is None:
            raise ValueError("batch fixes the shape together with seq_lens (one length) or data")
        return self


def onnxruntime_spec(profile: DeviceProfile) -> Any:
    """The profile's onnxruntime runtime entry; a ConfigError if it names none."""
    runtime = next((r for r in profile.runtimes if r.name == "onnxruntime"), None)
    if runtime is None:
        raise ConfigError(
            f"device {profile.name!r} names no onnxruntime runtime",
            hint="add runtimes: [{name: onnxruntime, versions: ..., execution_providers: [...]}] to its profile",
        )
    return runtime


def providers_for(options: OrtMobileOptions, ort: Any) -> tuple[list[str], dict[str, Any]]:
    """(execution providers in order, what the device profile said) for these options."""
    info: dict[str, Any] = {}
    if options.device is not None:
        profile = devices.get(options.device)
        runtime = onnxruntime_spec(profile)
        info = {
            "device": profile.name,
            "arch": profile.arch,
            "versions": runtime.versions,
            "platform": runtime.platform,
            "static_shapes": profile.static_shapes,
        }
        if profile.static_shapes and options.seq_lens is None and options.data is None:
            raise ConfigError(
                f"device {profile.name!r} runs only static shapes", hint="pass seq_lens (one length, e.g. --option seq_lens=128) or data"
            )
    eps = list(options.execution_providers or [CPU])
    known = ort.get_all_providers()
    unknown = [e for e in eps if e not in known]
    if unknown:
        raise ConfigError(f"unknown execution provider {unknown[0]!r}", hint=f"ONNX Runtime knows: {', '.join(known)}")
    if CPU not in eps:
        eps.append(CPU)  # ONNX Runtime runs what the others do not take on the CPU
    return eps, info


def fixed_shape(onnx_dir: Path, manifest: Manifest, options: OrtMobileOptions) -> tuple[int, int] | None:
    """The [batch, sequence] to fix the inputs to, or None (keep the export's shapes)."""
    seq = plan_seq_lens(onnx_dir, manifest, options.seq_lens, options.data)
    return None if seq is None else (options.batch or 1, seq.lengths[-1])


def _fix_shape(src: Path, dst: Path, shape: tuple[int, int]) -> None:
    onnx = require("onnx", for_="fixing input shapes for target ort-mobile")
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    model = onnx.load(str(src))
    try:
        for inp in model.graph.input:
            make_input_shape_fixed(model.graph, inp.name, list(shape))
    except ValueError as err:
        raise ConfigError(
            f"cannot fix the input shape to {list(shape)}: {err}",
            hint="a static export keeps its own shape; drop seq_lens/data or export with dynamic shapes",
        ) from err
    fix_output_shapes(model)
    onnx.save(model, str(dst))


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a converter logger's INFO lines ("Created config in /tmp/...") while it runs."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def convert(src: Path, out: Path, *, style: str, platform: str) -> None:
    """``src`` (.onnx) -> ``out/model.ort`` and ``out/required_operators.config``, with ONNX Runtime's converter."""
    require("onnx", for_="converting to the .ort format (target ort-mobile)")
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as tmp:
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), _quiet("ort_format_model.utils"):
                convert_onnx_models_to_ort(
                    src, output_dir=Path(tmp), optimization_styles=[OptimizationStyle[style]], target_platform=platform
                )
        except Exception as err:
            raise TargetError(
                f"ort-mobile: conversion to .ort failed: {str(err).strip().splitlines()[0]}",
                hint=log.getvalue().strip().splitlines()[-1] if log.getvalue().strip() else None,
            ) from err
        suffix = ".with_runtime_opt" if style == "Runtime" else ""
        shutil.move(Path(tmp) / f"{src.stem}{suffix}.ort", out / MODEL_FILE)
        config = Path(tmp) / f"{src.stem}.required_operators{suffix}.config"
        # The converter names the models it read by their (temporary) paths: keep the names only.
        lines = [f"# - {MODEL_FILE}" if line.startswith("# - ") else line for line in config.read_text().splitlines()]
        (out / CONFIG_FILE).write_text("\n".join(lines) + "\n")


def required_operators(path: Path) -> dict[str, list[str]]:
    """``domain;opset`` -> operator names, from a required_operators.config."""
    ops: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, opset, names = line.split(";", 2)
            ops[f"{domain or 'ai.onnx'};{opset}"] = names.split(",")
    return ops


class OrtMobileSession:
    def __init__(self, path: Path, manifest: Manifest, threads: int | None) -> None:
        ort = require("onnxruntime", for_="target ort-mobile")
        so = session_options(ort, "all", threads)
        if manifest.settings.get("optimization_style") == "Runtime":
            so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        available = ort.get_available_providers()
        wanted = [e for e in manifest.settings.get("execution_providers", [CPU]) if e in available] or [CPU]
        self._sess = ort.InferenceSession(str(path), so, providers=wanted)
        self.providers = self._sess.get_providers()
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self._static = manifest.static_shape
        self._pad_id = manifest.tokenizer.pad_id

    def __enter__(self) -> OrtMobileSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sess = None

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._sess.run(self.output_names, feed)))

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._static:
            return self._run(feed)
        batch, seq = self._static
        return run_in_buckets(feed, batch, [seq], self._pad_id, lambda _, f: self._run(f))


class OrtMobileTarget:
    name: ClassVar[str] = "ort-mobile"
    runtime: ClassVar[str] = "onnxruntime"
    description: ClassVar[str] = "ONNX Runtime mobile: .ort model + reduced operator config, device execution providers"
    options_model: ClassVar[type[TargetOptions]] = OrtMobileOptions
    static_shapes: ClassVar[bool] = False
    model_suffixes: ClassVar[tuple[str, ...]] = (".ort",)

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        runtime = onnxruntime_spec(profile)
        opts: dict[str, Any] = {"device": profile.name, "target_platform": _PLATFORM[profile.arch]}
        if runtime.execution_providers:
            opts["execution_providers"] = list(runtime.execution_providers)
        if profile.threads:
            opts["threads"] = profile.threads
        return opts

    def check_available(self) -> None:
        require("onnxruntime", for_=f"target {self.name}")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OrtMobileOptions, out: Path) -> dict[str, Any]:
        ort = require("onnxruntime", for_=f"target {self.name}")
        eps, device = providers_for(options, ort)
        platform = options.target_platform or _PLATFORM.get(device.get("arch", ""), "arm")
        src = onnx_dir / manifest.model_file
        shape, inputs, outputs = manifest.static_shape, manifest.inputs, manifest.outputs
        fixed_to = fixed_shape(onnx_dir, manifest, options)
        with tempfile.TemporaryDirectory() as tmp:
            if fixed_to is not None:
                batch, seq = fixed_to
                check_reference_fits(onnx_dir, manifest, seq, "fixed sequence length")
                fixed = Path(tmp) / src.name
                _fix_shape(src, fixed, fixed_to)
                src, shape = fixed, [batch, seq]
                inputs = [TensorSpec(name=t.name, shape=shape, dtype=t.dtype) for t in inputs]
                outputs = [TensorSpec(name=t.name, shape=[batch, *t.shape[1:]], dtype=t.dtype) for t in outputs]
            convert(src, out, style=options.optimization_style, platform=platform)
        notes = []
        if shape is None and any(e in STATIC_EPS for e in eps):
            notes.append(
                f"{', '.join(e for e in eps if e in STATIC_EPS)} take only nodes with fixed shapes: pass seq_lens (one length) to give them the whole graph"
            )
        return {
            "model_file": MODEL_FILE,
            "precision": manifest.precision,
            "runtime": {"onnxruntime": runtime_version(ort)},
            "static_shape": shape,
            "inputs": inputs,
            "outputs": outputs,
            "settings": {
                "format": "ORT",
                "optimization_style": options.optimization_style,
                "target_platform": platform,
                "required_operators": CONFIG_FILE,
                "operators": required_operators(out / CONFIG_FILE),
                "execution_providers": eps,
                "device": device or None,
                "threads": options.threads,
                "notes": notes,
            },
        }

    def runs_here(self) -> str | None:
        return None  # .ort models run on ONNX Runtime's CPU provider anywhere

    def executable_here(self, manifest: Manifest) -> str | None:
        return None  # .ort models run on ONNX Runtime's CPU provider anywhere

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OrtMobileSession:
        threads = options.threads if options else manifest.settings.get("threads")
        return OrtMobileSession(Path(artifact_dir) / manifest.model_file, manifest, threads)

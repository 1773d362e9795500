"""Target ``jetson``: a TensorRT engine for an NVIDIA Jetson (GPU, optionally a DLA core).

A TensorRT engine is specific to the TensorRT version and the GPU it is built on, so it
is built on the Jetson itself. ``compile`` always writes what it can without TensorRT:
the ONNX graph, a check of the graph against the TensorRT ONNX parser's support table
(and the DLA layer table), the optimization profile, the ``trtexec`` command line, and
``build_engine.sh`` / ``build_engine.py`` that build the engine on the device. Where
``tensorrt`` imports (on the Jetson) and matches the plan, it builds ``model.engine``
with the TensorRT Python API right away; otherwise the artifact is ``pending`` until
``build_engine.sh`` (trtexec) or ``build_engine.py`` (:mod:`.tensorrt_device`) runs there.

The pieces: :mod:`.tensorrt_plan` (profile, graph check, scripts: no TensorRT needed),
:mod:`.tensorrt_int8` (signed INT8 rewrite), :mod:`.tensorrt_engine` (TensorRT itself: builder
and session, imported lazily), :mod:`.tensorrt_device` (``build_engine.py`` on the device).
Sequence lengths: ``seq_lens`` (min/median/max of them) or ``data`` (min/p50/max of the
texts' token lengths) give the optimization profile's range (:mod:`.shapes`).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from edgekit import __version__
from edgekit.deploy import devices, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.targets import tensorrt_plan as plan
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deploy.targets.shapes import DataFile, SeqLens, plan_seq_lens
from edgekit.deploy.targets.tensorrt_engine import (
    FOR,
    JetsonSession,
    build_engine,
    engine_mismatch,
    gpu_compute_capability,
    major_of,
    tensorrt_here,
)
from edgekit.deploy.targets.tensorrt_int8 import check_signed, signed_qdq
from edgekit.deps import is_installed, require
from edgekit.errors import ConfigError, DataError, EdgekitError, MissingDependency, TargetError

PENDING = f"engine to be built on the device: run {plan.BUILD_SH} there (or python3 {plan.BUILD_PY})"


class JetsonOptions(TargetOptions):
    device: str | None = Field(None, description="device profile name, e.g. jetson-orin-nano")
    precision: Literal["fp16", "fp32", "int8"] = "fp16"
    dla_core: int | None = Field(None, ge=0, description="build for this DLA core (layers it cannot run go to the GPU)")
    gpu_fallback: bool = True
    workspace_mb: int = Field(1024, ge=16, description="builder workspace memory pool")
    seq_lens: SeqLens = Field(None, description="sequence lengths to cover (min, median, max of them)")
    data: DataFile = Field(None, description="texts file whose token lengths give the profile's range (min, p50, max)")
    max_batch: int = Field(8, ge=1)
    opt_batch: int = Field(1, ge=1)
    tensorrt_major: Literal[10, 11] | None = Field(None, description="TensorRT the plan targets; default from the device profile")

    @field_validator("tensorrt_major", mode="before")
    @classmethod
    def _int_major(cls, v: Any) -> Any:
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    @model_validator(mode="after")
    def _consistent(self) -> JetsonOptions:
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")
        if self.dla_core is not None and self.precision == "fp32":
            raise ValueError("the DLA runs fp16 or int8 only; use precision fp16 or int8 with dla_core")
        return self


def _device(name: str | None) -> DeviceProfile | None:
    return None if name is None else devices.get(name)


def profile_major(device: Any) -> int | None:
    """The TensorRT major a device profile's ``tensorrt`` runtime range allows; None if none given."""
    spec = next((r.versions for r in device.runtimes if r.name == "tensorrt"), None)
    if spec is None:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        allowed = SpecifierSet(spec)
    except InvalidSpecifier as err:
        raise ConfigError(
            f"device {device.name}: tensorrt versions {spec!r} is not a version range", hint="write e.g. '>=10.3,<11'"
        ) from err
    majors = [m for m in (10, 11) if any(allowed.contains(f"{m}.{minor}.{patch}") for minor in range(30) for patch in range(10))]
    if len(majors) != 1:
        raise ConfigError(
            f"device {device.name}: tensorrt versions {spec!r} match {'both TensorRT 10 and 11' if majors else 'neither TensorRT 10 nor 11'}",
            hint="set the option tensorrt_major=10 or 11",
        )
    return majors[0]


def _check_device(options: JetsonOptions, device: Any | None) -> None:
    if device is None:
        return
    where = f"device {device.name}"
    if JetsonTarget.name not in device.targets:
        raise ConfigError(f"{where} does not list the target jetson", hint=f"its targets: {', '.join(device.targets)}")
    if options.precision not in device.precisions:
        raise ConfigError(f"{where} does not run precision {options.precision}", hint=f"use one of: {', '.join(device.precisions)}")
    if options.dla_core is None:
        return
    if device.dla_cores == 0:
        raise ConfigError(
            f"{where} has no DLA cores, so dla_core={options.dla_core} cannot be used",
            hint="drop dla_core to build for the GPU, or pick a device with DLA (e.g. Jetson AGX Orin)",
        )
    if options.dla_core >= device.dla_cores:
        raise ConfigError(
            f"{where} has {device.dla_cores} DLA core(s); dla_core={options.dla_core} does not exist",
            hint=f"use dla_core 0..{device.dla_cores - 1}",
        )
    if device.dla_precisions and options.precision not in device.dla_precisions:
        raise ConfigError(
            f"the DLA of {where} runs {', '.join(device.dla_precisions)}, not {options.precision}", hint="change precision or drop dla_core"
        )


# ---------------------------------------------------------------- the target


class JetsonTarget:
    name: ClassVar[str] = "jetson"
    runtime: ClassVar[str] = "tensorrt"
    description: ClassVar[str] = (
        "TensorRT engine for NVIDIA Jetson (GPU, optionally DLA); built on the device where TensorRT is absent here"
    )
    options_model: ClassVar[type[TargetOptions]] = JetsonOptions
    # Engines take a min/opt/max optimization profile: a dynamic export needs no seq_lens.
    static_shapes: ClassVar[bool] = False
    model_suffixes: ClassVar[tuple[str, ...]] = (".engine", ".onnx")  # .onnx while the engine is still to be built on the device

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        return {"device": profile.name}  # the profile itself (TensorRT range, GPU, DLA) is read at compile

    def check_available(self) -> None:
        """Compiling needs onnx (graph checks, build plan); running needs tensorrt. Raise if neither is here."""
        if not (is_installed("onnx") or is_installed("tensorrt")):
            raise MissingDependency(
                f"{FOR} needs onnx to compile (graph checks and build plan) or tensorrt to build and run engines",
                hint="pip install 'edgekit[export]'; on the Jetson, TensorRT comes with JetPack",
            )

    def compile(self, onnx_dir: Path, manifest: Manifest, options: JetsonOptions, out: Path) -> dict[str, Any]:
        try:
            return self._compile(onnx_dir, manifest, options, out)
        except (ConfigError, DataError) as err:  # compile reports only TargetErrors as they are
            raise TargetError(f"{self.name}: {err.message}", hint=err.hint) from err

    def _compile(self, onnx_dir: Path, manifest: Manifest, options: JetsonOptions, out: Path) -> dict[str, Any]:
        onnx = require("onnx", for_=f"{FOR} (graph checks)")
        device = _device(options.device)
        _check_device(options, device)
        trt = tensorrt_here()
        major, major_from = self._plan_major(options, device, trt)
        dla = options.dla_core is not None
        model = onnx.load(str(onnx_dir / manifest.model_file), load_external_data=False)
        signed = signed_qdq(model) if plan.has_qdq(model) else None
        if signed and signed["asymmetric"]:
            raise TargetError(
                f"{self.name}: TensorRT takes symmetric INT8 Q/DQ only (zero point 0); {len(signed['asymmetric'])} UINT8 tensors have another "
                f"zero point, e.g. {signed['asymmetric'][0]}",
                hint="quantize with symmetric activations (edgekit lower does; for PTQ use the symmetric presets)",
            )
        check = plan.check_graph(model, precision=options.precision, trt_major=major, dla=dla, gpu_fallback=options.gpu_fallback)
        if check.failures:
            raise TargetError(
                f"{self.name}: TensorRT {major} cannot build this graph: {'; '.join(check.failures)}",
                hint="the support table is edgekit/data/tensorrt_onnx_ops.json",
            )
        seq, seq_note = self._seq_range(onnx_dir, manifest, options)
        shapes = plan.profile_shapes(
            [t.name for t in manifest.inputs], manifest.static_shape, seq, opt_batch=options.opt_batch, max_batch=options.max_batch
        )
        fields: dict[str, Any] = {}
        if dla and not plan.is_static(shapes):
            shapes = plan.pin(shapes, options.opt_batch)
            b, s = next(iter(shapes.values()))["opt"]
            fields = {
                "static_shape": [b, s],
                "inputs": [t.model_copy(update={"shape": [b, s]}) for t in manifest.inputs],
                "outputs": [t.model_copy(update={"shape": [b, *t.shape[1:]]}) for t in manifest.outputs],
            }
        _copy_onnx(onnx_dir, manifest.model_file, model, out, rewritten=bool(signed and (signed["exact"] or signed["requantized"])))
        signed_int8 = check_signed(out / manifest.model_file, onnx_dir, manifest, signed) if signed else None
        build_onnx = manifest.model_file
        if major >= 11 and options.precision == "fp16":
            build_onnx = _write_fp16(onnx, out / manifest.model_file, out / plan.FP16_ONNX)
        strongly_typed, builder_flags = plan.flags(options.precision, major)
        cmd = plan.trtexec_command(
            build_onnx,
            shapes,
            precision=options.precision,
            trt_major=major,
            dla_core=options.dla_core,
            gpu_fallback=options.gpu_fallback,
            workspace_mb=options.workspace_mb,
            dynamic=manifest.static_shape is None,
        )
        (out / plan.BUILD_SH).write_text(plan.build_script(cmd, trt_major=major, edgekit_version=__version__))
        (out / plan.BUILD_SH).chmod(0o755)
        (out / plan.BUILD_PY).write_text(plan.BUILD_PY_TEXT)
        settings: dict[str, Any] = {
            "device": device.name if device else None,
            "tensorrt_major": major,
            "tensorrt_major_from": major_from,
            "precision": options.precision,
            "strongly_typed": strongly_typed,
            "builder_flags": builder_flags,
            "dla": {"core": options.dla_core, "gpu_fallback": options.gpu_fallback} if dla else None,
            "shapes": shapes,
            "sequence": seq_note,
            "workspace_mb": options.workspace_mb,
            "support_check": check.settings(),
            "signed_int8": signed_int8,
            "plan": {
                "onnx": build_onnx,
                "engine": plan.ENGINE_FILE,
                "timing_cache": plan.TIMING_CACHE,
                "trtexec": shlex.join(cmd),
                "scripts": [plan.BUILD_SH, plan.BUILD_PY],
            },
            "pinned": {"tensorrt_major": major, "compute_capability": device.compute_capability if device else None},
        }
        base = {"precision": options.precision, **fields}
        not_here = self._not_here(trt, major, device, dla)
        if not_here is None:  # compile checks parity next, on every reference text
            not_here = plan.uncovered(parity.load_reference(onnx_dir / parity.REFERENCE)[0], shapes)
        if not_here is not None:
            settings["not_built_here"] = not_here
            runtime = {"tensorrt": runtime_version(trt) if trt else "not installed here"}
            return {**base, "model_file": manifest.model_file, "runtime": runtime, "settings": settings, "pending": PENDING}
        built = build_engine(trt, out / build_onnx, out, settings)
        settings |= {
            "built": built,
            "pinned": {"tensorrt_version": built["tensorrt_version"], "compute_capability": built["compute_capability"]},
        }
        return {**base, "model_file": plan.ENGINE_FILE, "runtime": {"tensorrt": built["tensorrt_version"]}, "settings": settings}

    @staticmethod
    def _plan_major(options: JetsonOptions, device: Any | None, trt: Any | None) -> tuple[int, str]:
        if options.tensorrt_major is not None:
            return options.tensorrt_major, "option tensorrt_major"
        if device is not None and (major := profile_major(device)) is not None:
            return major, f"device {device.name}"
        if trt is not None:
            return major_of(runtime_version(trt)), "the TensorRT installed here"
        return 10, "default (JetPack 6 ships TensorRT 10); set tensorrt_major=11 for JetPack 7"

    @staticmethod
    def _seq_range(onnx_dir: Path, manifest: Manifest, options: JetsonOptions) -> tuple[plan.SeqRange, str]:
        max_length = manifest.tokenizer.max_length
        if manifest.static_shape:
            s = manifest.static_shape[1]
            ignored = [k for k in ("seq_lens", "data", "max_batch", "opt_batch") if k in options.model_fields_set]
            note = f"static export {manifest.static_shape}" + (f"; ignored: {', '.join(ignored)}" if ignored else "")
            return plan.SeqRange(s, s, s, note), note
        picked = plan_seq_lens(onnx_dir, manifest, options.seq_lens, options.data)
        if picked is None:
            seq = plan.seq_range(max_length)
        elif picked.observed is not None:
            seq = plan.seq_range(max_length, lengths=picked.observed, source=str(options.data))
        else:
            seq = plan.seq_range(max_length, seq_lens=picked.lengths)
        return seq, seq.source

    @staticmethod
    def _not_here(trt: Any | None, major: int, device: Any | None, dla: bool) -> str | None:
        """Why the engine is not built on this machine now; None: build it."""
        if trt is None:
            return "tensorrt is not installed here"
        version = runtime_version(trt)
        if major_of(version) != major:
            return f"TensorRT {version} is installed here; the plan targets TensorRT {major}"
        if dla and major >= 11 and tuple(int(x) for x in re.findall(r"\d+", version)[:3]) < (11, 4, 1):
            return f"TensorRT {version} has no DLA support on Jetson (it returns in 11.4.1)"
        try:
            here = gpu_compute_capability()
        except EdgekitError as err:
            return f"no usable GPU here ({err})"
        if device is not None and device.compute_capability and device.compute_capability != here:
            return f"this GPU is compute capability {here}; device {device.name} is {device.compute_capability}"
        return None

    def runs_here(self) -> str | None:
        if tensorrt_here() is None:
            return "tensorrt is not installed here (TensorRT engines are built and run on the Jetson itself)"
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        trt = tensorrt_here()
        if trt is None:
            return self.runs_here()
        if manifest.pending:
            return f"the engine is not built yet ({manifest.settings.get('not_built_here', manifest.pending)})"
        return engine_mismatch(trt, manifest.settings.get("pinned") or {})

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> JetsonSession:
        if manifest.pending:
            raise TargetError(f"{artifact_dir}: the TensorRT engine is not built yet", hint=manifest.pending)
        trt = require("tensorrt", for_=FOR)
        why = engine_mismatch(trt, manifest.settings.get("pinned") or {})
        if why is not None:
            raise TargetError(
                f"{artifact_dir}: refusing to load the engine: {why}",
                hint="an engine runs only with the TensorRT and GPU it was built for; rebuild it here with build_engine.sh",
            )
        dla = manifest.settings.get("dla") or {}
        shapes = manifest.settings.get("shapes") or {}
        first = next(iter(shapes.values())) if shapes else {"min": [1, 1], "max": [None, None]}
        return JetsonSession(
            Path(artifact_dir) / manifest.model_file,
            dla_core=dla.get("core"),
            max_batch=first["max"][0],
            min_seq=first["min"][1],
            pad_id=manifest.tokenizer.pad_id,
        )


def _copy_onnx(onnx_dir: Path, name: str, model: Any, out: Path, *, rewritten: bool = False) -> None:
    """Copy the graph (or write ``model``, when edgekit rewrote it) and any external-data files it names."""
    if rewritten:
        import onnx

        onnx.save(model, str(out / name))
    else:
        shutil.copy2(onnx_dir / name, out / name)
    for tensor in model.graph.initializer:
        if tensor.data_location == 1:  # onnx.TensorProto.EXTERNAL
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if not (out / location).exists():
                shutil.copy2(onnx_dir / location, out / location)


def _write_fp16(onnx: Any, src: Path, dst: Path) -> str:
    """An fp16 copy of the graph (inputs and outputs keep their types): TensorRT 11 takes precision from the graph."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    large = sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=f"{dst.name}.data" if large else None)
    return dst.name

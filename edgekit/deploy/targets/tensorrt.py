"""Target ``jetson``: a TensorRT engine for an NVIDIA Jetson (GPU, optionally a DLA core).

A TensorRT engine is specific to the TensorRT version and the GPU it is built on, so it
is built on the Jetson itself. ``compile`` always writes what it can without TensorRT:
the ONNX graph, a check of the graph against the TensorRT ONNX parser's support table
(and the DLA layer table), the optimization profile, the ``trtexec`` command line, and
``build_engine.sh`` / ``build_engine.py`` that build the engine on the device. Where
``tensorrt`` imports (on the Jetson) and matches the plan, it builds ``model.engine``
with the TensorRT Python API right away; otherwise the artifact is ``pending`` until
``build_engine.sh`` (trtexec) or ``build_engine.py`` (this module's builder) runs there.

TensorRT and cuda-python are imported only when used. Every TensorRT name this module
uses is listed in ``TRT_API`` (and ``TRT_API_10``); the tests check those names against
the names compiled into the TensorRT 10 and 11 Python bindings (edgekit/data/tensorrt_api).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edgekit import __version__
from edgekit.deploy import artifact, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.targets import tensorrt_plan as plan
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deps import is_installed, require
from edgekit.errors import ArtifactError, ConfigError, DataError, EdgekitError, MissingDependency, ParityError, TargetError

FOR = "target jetson"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
PENDING = f"engine to be built on the device: run {plan.BUILD_SH} there (or python3 {plan.BUILD_PY})"

# Every TensorRT attribute this module uses, as class.member paths, on TensorRT 10 and 11.
TRT_API: tuple[str, ...] = (
    "__version__",
    "nptype",
    "Logger",
    "Logger.WARNING",
    "Builder",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "Builder.num_DLA_cores",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "INetworkDefinition.num_inputs",
    "INetworkDefinition.get_input",
    "INetworkDefinition.num_layers",
    "INetworkDefinition.get_layer",
    "ITensor.name",
    "ITensor.shape",
    "ILayer.name",
    "ILayer.type",
    "OnnxParser",
    "OnnxParser.parse_from_file",
    "OnnxParser.num_errors",
    "OnnxParser.get_error",
    "ParserError.desc",
    "ParserError.node",
    "ParserError.node_name",
    "ParserError.node_operator",
    "IBuilderConfig.set_memory_pool_limit",
    "MemoryPoolType.WORKSPACE",
    "IBuilderConfig.set_flag",
    "BuilderFlag.GPU_FALLBACK",
    "IBuilderConfig.default_device_type",
    "DeviceType.DLA",
    "IBuilderConfig.DLA_core",
    "IBuilderConfig.can_run_on_DLA",
    "IBuilderConfig.add_optimization_profile",
    "IOptimizationProfile.set_shape",
    "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache",
    "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize",
    "Runtime",
    "Runtime.DLA_core",
    "Runtime.deserialize_cuda_engine",
    "ICudaEngine.create_execution_context",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype",
    "TensorIOMode.INPUT",
    "IExecutionContext.set_input_shape",
    "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
)
# Weak typing: precision flags that exist in TensorRT 10 only (11 builds strongly typed networks).
TRT_API_10: tuple[str, ...] = ("BuilderFlag.FP16", "BuilderFlag.INT8")


class JetsonOptions(TargetOptions):
    device: str | None = Field(None, description="device profile name, e.g. jetson-orin-nano")
    precision: Literal["fp16", "fp32", "int8"] = "fp16"
    dla_core: int | None = Field(None, ge=0, description="build for this DLA core (layers it cannot run go to the GPU)")
    gpu_fallback: bool = True
    workspace_mb: int = Field(1024, ge=16, description="builder workspace memory pool")
    seq_lens: list[Annotated[int, Field(ge=1)]] | None = Field(None, description="sequence lengths to cover (min, median, max)")
    data: Path | None = Field(None, description="text file whose token lengths give the profile's sequence range")
    max_batch: int = Field(8, ge=1)
    opt_batch: int = Field(1, ge=1)
    tensorrt_major: Literal[10, 11] | None = Field(None, description="TensorRT the plan targets; default from the device profile")

    @field_validator("seq_lens", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [int(x) for x in v.replace(" ", "").split(",") if x] if isinstance(v, str) else v

    @field_validator("tensorrt_major", mode="before")
    @classmethod
    def _int_major(cls, v: Any) -> Any:
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    @model_validator(mode="after")
    def _consistent(self) -> JetsonOptions:
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")
        if self.seq_lens and self.data:
            raise ValueError("give seq_lens or data, not both")
        if self.dla_core is not None and self.precision == "fp32":
            raise ValueError("the DLA runs fp16 or int8 only; use precision fp16 or int8 with dla_core")
        return self


# ---------------------------------------------------------------- facts about here and the device


def _trt() -> Any | None:
    """The tensorrt module, or None where it is not installed."""
    return require("tensorrt", for_=FOR) if is_installed("tensorrt") else None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python 12.6 and newer
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as err:
            raise MissingDependency(
                f"cuda-python is not installed but is needed for {FOR} (GPU memory for TensorRT)",
                hint="pip install cuda-python (the version of the device's CUDA)",
            ) from err
    return runtime


def _cuda(result: Any, what: str) -> Any:
    """The value of a cuda-python call, which returns (error, *values); raise on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TargetError(f"CUDA {what} failed: {err}", hint="check the GPU with 'nvidia-smi' or 'tegrastats'")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_compute_capability() -> str:
    cudart = _cudart()
    attr = cudart.cudaDeviceAttr
    major = _cuda(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0), "cudaDeviceGetAttribute")
    minor = _cuda(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0), "cudaDeviceGetAttribute")
    return f"{major}.{minor}"


def l4t_release(path: Path = TEGRA_RELEASE) -> str | None:
    """Jetson Linux (L4T) release, e.g. 'r36.4.3', from /etc/nv_tegra_release; None elsewhere."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+)\D+REVISION:\s*([\d.]+)", first)
    return f"r{m.group(1)}.{m.group(2)}" if m else first.strip("# ").strip()


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _device(name: str | None) -> Any | None:
    if name is None:
        return None
    from edgekit.deploy import devices  # devices imports the targets: not at module level

    return devices.get(name)


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


def _mismatch(trt: Any, pinned: dict[str, Any]) -> str | None:
    """Why an engine pinned to ``pinned`` cannot run here; None if it can."""
    version = runtime_version(trt)
    if (want := pinned.get("tensorrt_version")) and want != version:
        return f"the engine was built with TensorRT {want}, this is TensorRT {version}"
    if (major := pinned.get("tensorrt_major")) and major != _major(version):
        return f"the plan targets TensorRT {major}, this is TensorRT {version}"
    if cc := pinned.get("compute_capability"):
        try:
            here = gpu_compute_capability()
        except EdgekitError as err:
            return str(err)
        if here != cc:
            return f"the engine is for GPU compute capability {cc}, this GPU is {here}"
    return None


# ---------------------------------------------------------------- building with the TensorRT Python API


def build_engine(trt: Any, onnx_path: Path, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Build ``out/model.engine`` (and its timing cache) as ``settings`` plans; return what was built."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: explicit batch is the default (flags 0); 11 is strongly typed always.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings["strongly_typed"] else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        detail = "; ".join(f"{err.node_operator() or '?'} node {err.node_name() or err.node()}: {err.desc()}" for err in errors[:5])
        raise TargetError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: {detail or 'no error reported'}", hint="see support_check in manifest.json"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mb"] << 20)
    for flag in settings["builder_flags"]:  # TensorRT 10 only: FP16, INT8 (TRT_API_10)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    on_gpu = []
    dla = settings.get("dla")
    if dla is not None:
        if builder.num_DLA_cores <= dla["core"]:
            raise TargetError(
                f"this device has {builder.num_DLA_cores} DLA core(s); dla_core={dla['core']} does not exist",
                hint="recompile with another dla_core, or without it",
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla["core"]
        if dla["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not config.can_run_on_DLA(layer):
                on_gpu.append(f"{layer.name} ({layer.type})")
    shapes = settings["shapes"]
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise TargetError(f"the graph's input {tensor.name!r} has no shapes in the plan", hint="recompile the artifact")
        if any(d < 0 for d in tuple(tensor.shape)):
            s = shapes[tensor.name]
            profile.set_shape(tensor.name, s["min"], s["opt"], s["max"])
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    cache_file = out / plan.TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TargetError(
            "TensorRT could not build the engine (its log above says why)",
            hint="check support_check in manifest.json; a larger workspace_mb may help",
        )
    (out / plan.ENGINE_FILE).write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt_version": runtime_version(trt),
        "compute_capability": gpu_compute_capability(),
        "l4t": l4t_release(),
        "dla_layers_on_gpu": on_gpu if dla is not None else None,
        "built_with": "edgekit (TensorRT Python API)",
    }


# ---------------------------------------------------------------- running


class JetsonSession:
    """A TensorRT engine with device buffers from cuda-python.

    Feeds to fit the optimization profile: more rows than its largest batch are split,
    sequences shorter than its shortest are padded (masked, so outputs do not change).
    """

    def __init__(
        self, engine_path: Path, *, dla_core: int | None = None, max_batch: int | None = None, min_seq: int = 1, pad_id: int = 0
    ) -> None:
        trt = require("tensorrt", for_=FOR)
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if dla_core is not None:
            self._runtime.DLA_core = dla_core
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise TargetError(
                f"{engine_path}: TensorRT could not deserialize the engine", hint="rebuild it on this device with build_engine.sh"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._max_batch, self._min_seq, self._pad_id = max_batch, min_seq, pad_id
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream = _cuda(self._cudart.cudaStreamCreate(), "cudaStreamCreate")

    def __enter__(self) -> JetsonSession:
        return self

    def __exit__(self, *exc: object) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = self._runtime = None

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda(self._cudart.cudaFree(ptr), "cudaFree")
            ptr, size = _cuda(self._cudart.cudaMalloc(nbytes), "cudaMalloc"), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = next(iter(feed.values())).shape[0]
        if self._max_batch and rows > self._max_batch:
            parts = [self.infer({k: v[i : i + self._max_batch] for k, v in feed.items()}) for i in range(0, rows, self._max_batch)]
            return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}
        width = next(iter(feed.values())).shape[1]
        if width < self._min_seq:
            feed = {
                k: np.pad(v, ((0, 0), (0, self._min_seq - width)), constant_values=self._pad_id if k == "input_ids" else 0)
                for k, v in feed.items()
            }
        cudart, kinds = self._cudart, self._cudart.cudaMemcpyKind
        hosts = []
        for name in self.input_names:
            arr = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, arr.shape):
                raise TargetError(
                    f"input {name!r} of shape {arr.shape} is outside the engine's optimization profile",
                    hint="see settings.shapes in manifest.json",
                )
            ptr = self._device(name, max(arr.nbytes, 1))
            _cuda(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kinds.cudaMemcpyHostToDevice, self._stream), "cudaMemcpyAsync")
            self._context.set_tensor_address(name, ptr)
            hosts.append(arr)  # alive until the stream is synchronized
        outputs = {}
        for name in self.output_names:
            host = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
            self._context.set_tensor_address(name, self._device(name, max(host.nbytes, 1)))
            outputs[name] = host
        if not self._context.execute_async_v3(int(self._stream)):  # TensorRT takes the stream handle as an int
            raise TargetError("TensorRT failed to run the engine (its log above says why)")
        for name, host in outputs.items():
            _cuda(
                cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, kinds.cudaMemcpyDeviceToHost, self._stream),
                "cudaMemcpyAsync",
            )
        _cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outputs


# ---------------------------------------------------------------- the target


class JetsonTarget:
    name: ClassVar[str] = "jetson"
    runtime: ClassVar[str] = "tensorrt"
    description: ClassVar[str] = (
        "TensorRT engine for NVIDIA Jetson (GPU, optionally DLA); built on the device where TensorRT is absent here"
    )
    options_model: ClassVar[type[TargetOptions]] = JetsonOptions

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
        trt = _trt()
        major, major_from = self._plan_major(options, device, trt)
        dla = options.dla_core is not None
        model = onnx.load(str(onnx_dir / manifest.model_file), load_external_data=False)
        signed = plan.signed_qdq(model) if plan.has_qdq(model) else None
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
        signed_int8 = _check_signed(out / manifest.model_file, onnx_dir, manifest, signed) if signed else None
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
            return _major(runtime_version(trt)), "the TensorRT installed here"
        return 10, "default (JetPack 6 ships TensorRT 10); set tensorrt_major=11 for JetPack 7"

    @staticmethod
    def _seq_range(onnx_dir: Path, manifest: Manifest, options: JetsonOptions) -> tuple[plan.SeqRange, str]:
        max_length = manifest.tokenizer.max_length
        if manifest.static_shape:
            s = manifest.static_shape[1]
            ignored = [k for k in ("seq_lens", "data", "max_batch", "opt_batch") if k in options.model_fields_set]
            note = f"static export {manifest.static_shape}" + (f"; ignored: {', '.join(ignored)}" if ignored else "")
            return plan.SeqRange(s, s, s, note), note
        if options.data is not None:
            from edgekit.deploy import data
            from edgekit.deploy.tokenizer import Tokenizer

            lengths = Tokenizer(onnx_dir, manifest).lengths(data.read_texts(options.data))
            seq = plan.seq_range(max_length, lengths=lengths, source=str(options.data))
            return seq, seq.source
        too_long = [n for n in options.seq_lens or [] if n > max_length]
        if too_long:
            raise ConfigError(f"seq_lens {too_long} exceed the model's max_length {max_length}", hint=f"use lengths <= {max_length}")
        seq = plan.seq_range(max_length, seq_lens=options.seq_lens)
        return seq, seq.source

    @staticmethod
    def _not_here(trt: Any | None, major: int, device: Any | None, dla: bool) -> str | None:
        """Why the engine is not built on this machine now; None: build it."""
        if trt is None:
            return "tensorrt is not installed here"
        version = runtime_version(trt)
        if _major(version) != major:
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
        if _trt() is None:
            return "tensorrt is not installed here (TensorRT engines are built and run on the Jetson itself)"
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        trt = _trt()
        if trt is None:
            return self.runs_here()
        if manifest.pending:
            return f"the engine is not built yet ({manifest.settings.get('not_built_here', manifest.pending)})"
        return _mismatch(trt, manifest.settings.get("pinned") or {})

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> JetsonSession:
        if manifest.pending:
            raise TargetError(f"{artifact_dir}: the TensorRT engine is not built yet", hint=manifest.pending)
        trt = require("tensorrt", for_=FOR)
        why = _mismatch(trt, manifest.settings.get("pinned") or {})
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


def _check_signed(path: Path, onnx_dir: Path, manifest: Manifest, signed: dict[str, list[str]]) -> dict[str, Any]:
    """Record the signed-INT8 rewrite; a requantized graph must still pass its parity check
    (run with ONNX Runtime here, on the artifact's reference texts)."""
    out: dict[str, Any] = {
        "exact": len(signed["exact"]),
        "requantized": len(signed["requantized"]),
        "requantized_tensors": signed["requantized"],
    }
    if not signed["requantized"]:
        out["note"] = "every UINT8 activation became INT8 exactly (codes <= 127)"
        return out
    out["note"] = (
        "non-negative 8-bit activations keep 7 bits on TensorRT (its INT8 is signed): scale x 255/127 after a Relu; "
        "checked against the reference with ONNX Runtime here"
    )
    if not is_installed("onnxruntime"):
        out["parity_onnxruntime"] = "not checked: onnxruntime is not installed here"
        return out
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed, reference = parity.load_reference(onnx_dir / parity.REFERENCE)
    name = manifest.outputs[0].name
    actual = parity.run_chunked(lambda f: sess.run([name], f)[0], feed, 8)
    report = parity.compare(
        reference,
        actual,
        task=manifest.source.task,
        output=name,
        tolerance=plan.REQUANTIZED,
        runtime=f"onnxruntime {ort.__version__} running the signed-INT8 graph built for TensorRT",
    )
    try:
        parity.enforce(report)
    except ParityError as err:
        raise TargetError(
            f"{FOR}: with signed INT8 (TensorRT has no UINT8) the graph no longer matches its reference: {err.message}",
            hint="this scheme's non-negative 8-bit activations need UINT8; use a scheme with binary or signed activations, or precision fp16 on a float export",
        ) from err
    out["parity_onnxruntime"] = report.model_dump()
    return out


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


# ---------------------------------------------------------------- on the device: build_engine.py


def finish(artifact_dir: Path, *, adopt: bool = False) -> Manifest:
    """Build (or, with ``adopt``, take trtexec's) engine of a pending artifact; check parity; update the manifest."""
    root = Path(artifact_dir)
    manifest = artifact.read_manifest(root)
    if manifest.target != JetsonTarget.name:
        raise ArtifactError(
            f"{root}: a {manifest.target} artifact, not a jetson one", hint="pass a directory written by 'edgekit compile -t jetson'"
        )
    trt = require("tensorrt", for_=FOR)
    settings = dict(manifest.settings)
    version = runtime_version(trt)
    if _major(version) != settings["tensorrt_major"]:
        raise TargetError(
            f"{root}: planned for TensorRT {settings['tensorrt_major']}, this is TensorRT {version}",
            hint=f"recompile with the option tensorrt_major={_major(version)}",
        )
    if adopt:
        if not (root / plan.ENGINE_FILE).exists():
            raise TargetError(f"{root}: no {plan.ENGINE_FILE} to adopt", hint=f"run {plan.BUILD_SH} first")
        built = {"tensorrt_version": version, "compute_capability": gpu_compute_capability(), "l4t": l4t_release(), "built_with": "trtexec"}
    else:
        built = build_engine(trt, root / settings["plan"]["onnx"], root, settings)
    for key in ("not_built_here", "parity_not_run", "parity_rows"):
        settings.pop(key, None)
    settings |= {
        "built": built,
        "pinned": {"tensorrt_version": built["tensorrt_version"], "compute_capability": built["compute_capability"]},
    }
    update = {"model_file": plan.ENGINE_FILE, "pending": None, "runtime": {"tensorrt": version}, "settings": settings}
    feed, reference = parity.load_reference(root / parity.REFERENCE)
    total = len(reference)
    feed, reference, batch = plan.fit_feed(feed, reference, settings["shapes"], manifest.tokenizer.pad_id)
    if not len(reference):
        settings["parity_not_run"] = "no reference text fits the engine's optimization profile"
        return artifact.write_manifest(root, manifest.model_copy(update=update))
    if len(reference) < total:
        settings["parity_rows"] = f"{len(reference)} of {total} reference texts (the others are longer than the engine's profile)"
    manifest = manifest.model_copy(update=update)
    tolerance = (
        parity.Tolerance(**settings["tolerance"])
        if "tolerance" in settings
        else parity.TOLERANCES.get(manifest.precision, parity.Tolerance())
    )
    output = manifest.outputs[0].name
    with JetsonTarget().load(root, manifest) as session:
        actual = parity.run_chunked(lambda f: session.infer(f)[output], feed, batch)
    report = parity.enforce(
        parity.compare(reference, actual, task=manifest.task, output=output, runtime=f"jetson (tensorrt {version})", tolerance=tolerance)
    )
    return artifact.write_manifest(root, manifest.model_copy(update={"parity": report}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=plan.BUILD_PY, description="Build the TensorRT engine of a pending jetson artifact, on the device.")
    ap.add_argument("artifact", type=Path, help="the artifact directory (written by 'edgekit compile -t jetson')")
    ap.add_argument("--adopt", action="store_true", help=f"record the {plan.ENGINE_FILE} that {plan.BUILD_SH} built with trtexec")
    args = ap.parse_args(argv)
    try:
        manifest = finish(args.artifact, adopt=args.adopt)
    except EdgekitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = (
        f"parity passed (max abs diff {manifest.parity.max_abs_diff:.3g})"
        if manifest.parity
        else manifest.settings.get("parity_not_run", "")
    )
    print(f"{args.artifact / plan.ENGINE_FILE}: TensorRT {manifest.runtime['tensorrt']}; {result}")
    return 0

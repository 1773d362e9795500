"""TensorRT itself, for the ``jetson`` target: what this machine is, the engine builder and the session.

TensorRT and cuda-python are imported only when used. Every TensorRT name this module
uses is listed in ``TRT_API`` (and ``TRT_API_10``); the tests check those names against
the names compiled into the TensorRT 10 and 11 Python bindings (edgekit/data/tensorrt_api).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deploy.targets import tensorrt_plan as plan
from edgekit.deploy.targets.base import runtime_version
from edgekit.deploy.targets.shapes import pad_to
from edgekit.deps import is_installed, require
from edgekit.errors import EdgekitError, MissingDependency, TargetError

FOR = "target jetson"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


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


# ---------------------------------------------------------------- facts about here and the device


def tensorrt_here() -> Any | None:
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


def major_of(version: str) -> int:
    return int(version.split(".")[0])


def engine_mismatch(trt: Any, pinned: dict[str, Any]) -> str | None:
    """Why an engine pinned to ``pinned`` cannot run here; None if it can."""
    version = runtime_version(trt)
    if (want := pinned.get("tensorrt_version")) and want != version:
        return f"the engine was built with TensorRT {want}, this is TensorRT {version}"
    if (major := pinned.get("tensorrt_major")) and major != major_of(version):
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
            feed = pad_to(feed, self._min_seq, self._pad_id)
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

"""Target ``openvino-cpu``: OpenVINO IR (``convert_model`` + ``save_model``) run on the CPU plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgekit.artifact import Manifest
from edgekit.deps import require
from edgekit.errors import TargetError
from edgekit.targets.base import TargetOptions, runtime_version

MODEL_FILE = "model.xml"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoOptions(TargetOptions):
    # fp32 by default: on CPUs with AMX or AVX512-BF16, OpenVINO otherwise computes in bf16,
    # which is faster but is not what parity against fp32 PyTorch measures.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    streams: int | None = None


def _config(precision: str, hint: str, threads: int | None, streams: int | None) -> dict[str, str]:
    cfg = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    if streams:
        cfg["NUM_STREAMS"] = str(streams)
    return cfg


class OpenVinoSession:
    def __init__(self, path: Path, config: dict[str, str], device: str = "CPU") -> None:
        ov = require("openvino", for_="target openvino-cpu")
        core = ov.Core()
        self._compiled = core.compile_model(str(path), device, config)
        self._request = self._compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.output_names = [p.get_any_name() for p in self._compiled.outputs]

    def __enter__(self) -> OpenVinoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = self._compiled = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feed)
        # Copy: the request reuses its output buffers on the next call.
        return {name: np.array(result[self._compiled.output(name)]) for name in self.output_names}


class OpenVinoCpuTarget:
    name: ClassVar[str] = "openvino-cpu"
    runtime: ClassVar[str] = "openvino"
    description: ClassVar[str] = "OpenVINO IR on the CPU plugin"
    options_model: ClassVar[type[TargetOptions]] = OpenVinoOptions

    def check_available(self) -> None:
        ov = require("openvino", for_=f"target {self.name}")
        if "CPU" not in ov.Core().available_devices:
            raise TargetError("OpenVINO reports no CPU device here", hint="check the OpenVINO installation")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OpenVinoOptions, out: Path) -> dict[str, Any]:
        ov = require("openvino", for_=f"target {self.name}")
        model = ov.convert_model(str(onnx_dir / manifest.model_file))
        ov.save_model(model, str(out / MODEL_FILE), compress_to_fp16=options.precision == "fp16")
        return {
            "model_file": MODEL_FILE,
            "precision": options.precision,
            "runtime": {"openvino": runtime_version(ov)},
            "settings": {"device": "CPU", "config": _config(options.precision, options.hint, options.threads, options.streams)},
        }

    def runs_here(self) -> str | None:
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OpenVinoSession:
        config = dict(manifest.settings.get("config", {}))
        if options is not None and options.threads:
            config["INFERENCE_NUM_THREADS"] = str(options.threads)
        return OpenVinoSession(Path(artifact_dir) / manifest.model_file, config)

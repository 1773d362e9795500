"""Target ``ort-cpu``: ONNX Runtime on the CPU, graph optimizations applied offline and saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgekit.artifact import Manifest
from edgekit.deps import require
from edgekit.targets.base import TargetOptions, runtime_version

MODEL_FILE = "model.ort-opt.onnx"


class OrtOptions(TargetOptions):
    # "extended" is the highest level ONNX Runtime recommends saving offline: "all" adds
    # layout transforms specific to the CPU that ran the optimization. Sessions still apply
    # "all" at load time on the device itself.
    optimization: Literal["basic", "extended", "all"] = "extended"


_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(ort: Any, level: str, threads: int | None) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OrtSession:
    def __init__(self, path: Path, threads: int | None) -> None:
        ort = require("onnxruntime", for_="target ort-cpu")
        self._sess = ort.InferenceSession(str(path), session_options(ort, "all", threads), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def __enter__(self) -> OrtSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sess = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._sess.run(self.output_names, feed)))


class OrtCpuTarget:
    name: ClassVar[str] = "ort-cpu"
    runtime: ClassVar[str] = "onnxruntime"
    description: ClassVar[str] = "ONNX Runtime, CPU execution provider, graph optimizations saved"
    options_model: ClassVar[type[TargetOptions]] = OrtOptions

    def check_available(self) -> None:
        require("onnxruntime", for_=f"target {self.name}")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OrtOptions, out: Path) -> dict[str, Any]:
        ort = require("onnxruntime", for_=f"target {self.name}")
        so = session_options(ort, options.optimization, options.threads)
        so.optimized_model_filepath = str(out / MODEL_FILE)
        ort.InferenceSession(str(onnx_dir / manifest.model_file), so, providers=["CPUExecutionProvider"])
        return {
            "model_file": MODEL_FILE,
            "precision": manifest.precision,
            "runtime": {"onnxruntime": runtime_version(ort)},
            "settings": {"optimization_saved": options.optimization, "optimization_at_load": "all", "threads": options.threads, "provider": "CPUExecutionProvider"},
        }

    def runs_here(self) -> str | None:
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OrtSession:
        threads = options.threads if options else manifest.settings.get("threads")
        return OrtSession(Path(artifact_dir) / manifest.model_file, threads)

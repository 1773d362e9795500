"""Target ``openvino-cpu``: OpenVINO IR (``convert_model`` + ``save_model``) run on the CPU plugin.

INT8: a QDQ source (``edgekit lower``, ``edgekit ptq``) becomes an IR with FakeQuantize and
int8 weights; option ``int8=nncf`` (+ ``calibration=<texts file>``) quantizes an FP32 source
with NNCF here (:func:`edgekit.build.ptq.nncf_quantize`). Either way compile compiles the IR on
the CPU plugin and reads the runtime model's execution precisions
(:func:`edgekit.deploy.int8check.openvino_report`); in a lowered binary/ternary graph, quantized
matmuls that would run in float are an error naming them (in a PTQ graph they are recorded).

Sequence buckets (``buckets=64,128`` or ``buckets_from=<texts file>``: p50/p90/max of its
token lengths plus the powers of two between): the session compiles one model per bucket with
a static sequence length (batch stays dynamic) and pads each call to the smallest bucket that
holds it; a longer input runs on the dynamic-shape model, compiled on first use. Measured
(bench/compare, MiniLM W2A8 lowered, batch 1 over real dev texts, 2-core x86): buckets
64/112/128/256 5.8 ms mean, dynamic shapes 7.7 ms, padding to 256 12.7 ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from edgekit.deploy import packing
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.targets.base import SeqLens, TargetOptions, runtime_version
from edgekit.deps import require
from edgekit.errors import ConfigError, TargetError

MODEL_FILE = "model.xml"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoOptions(TargetOptions):
    # fp32 by default: on CPUs with AMX or AVX512-BF16, OpenVINO otherwise computes in bf16,
    # which is faster but is not what parity against fp32 PyTorch measures.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    streams: int | None = None
    int8: Literal["none", "nncf"] = Field("none", description="nncf: INT8 post-training quantization of an FP32 model with NNCF")
    calibration: str | None = Field(None, description="int8=nncf: calibration texts (.txt, one per line, or JSONL/CSV 'text')")
    samples: int = Field(256, ge=1, description="int8=nncf: calibration texts used")
    buckets: SeqLens = Field(None, description="static sequence buckets, e.g. 64,128 (default: dynamic shapes)")
    buckets_from: str | None = Field(None, description="texts file whose token-length histogram (p50/p90/max) picks the buckets")

    @model_validator(mode="after")
    def _consistent(self) -> OpenVinoOptions:
        if self.buckets is not None and self.buckets_from is not None:
            raise ValueError("give buckets or buckets_from, not both")
        if self.int8 == "nncf" and self.calibration is None:
            raise ValueError("int8=nncf needs calibration=<texts file>")
        if self.calibration is not None and self.int8 != "nncf":
            raise ValueError("calibration is for int8=nncf")
        return self


def _config(precision: str, hint: str, threads: int | None, streams: int | None) -> dict[str, str]:
    cfg = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    if streams:
        cfg["NUM_STREAMS"] = str(streams)
    return cfg


class OpenVinoSession:
    def __init__(
        self,
        path: Path,
        config: dict[str, str],
        device: str = "CPU",
        *,
        buckets: list[int] | None = None,
        pad_id: int = 0,
        packed: dict[str, Any] | None = None,
    ) -> None:
        """``packed``: the manifest's ``settings.packed`` (low-bit constants cut out of the .bin: packing.pack_ir)."""
        ov = require("openvino", for_="target openvino-cpu")
        core = ov.Core()
        self.buckets = sorted(buckets) if buckets else None
        self.pad_id = pad_id
        self.last_bucket: int | None = None
        self._config, self._device, self._core = config, device, core
        # the model OpenVINO compiles: the IR's path, or (packed) the model read from memory
        self._source: Any = str(path)
        if packed:
            weights = packing.ir_weights(Path(path).parent, packed)
            self._source = core.read_model(Path(path).read_text(), ov.Tensor(weights))
        self._dynamic: tuple[Any, Any] | None = None
        if self.buckets:
            model = core.read_model(self._source) if isinstance(self._source, str) else self._source
            self._models = {}
            for s in self.buckets:
                m = model.clone()
                m.reshape({p.get_any_name(): ov.PartialShape([-1, s]) for p in m.inputs})
                compiled = core.compile_model(m, device, config)
                self._models[s] = (compiled, compiled.create_infer_request())
            self._compiled, self._request = self._models[self.buckets[-1]]
        else:
            self._compiled = core.compile_model(self._source, device, config)
            self._request = self._compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.output_names = [p.get_any_name() for p in self._compiled.outputs]

    @property
    def compiled(self) -> Any:
        return self._compiled

    def __enter__(self) -> OpenVinoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = self._compiled = self._dynamic = None
        self._models = {}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled, request = self._compiled, self._request
        if self.buckets:
            from edgekit.deploy.targets.openvino_npu import fit_feed, pick_bucket, used_length

            rows = next(iter(feed.values())).shape[0]
            length = used_length(feed, self.pad_id)
            if length > self.buckets[-1]:  # longer than every bucket: the dynamic-shape model, compiled once
                if self._dynamic is None:
                    dyn = self._core.compile_model(self._source, self._device, self._config)
                    self._dynamic = (dyn, dyn.create_infer_request())
                compiled, request = self._dynamic
                self.last_bucket = None
            else:
                s = pick_bucket(length, self.buckets)
                self.last_bucket = s
                feed = fit_feed(feed, rows, s, self.pad_id)
                compiled, request = self._models[s]
        result = request.infer(feed)
        # Copy: the request reuses its output buffers on the next call.
        return {name: np.array(result[compiled.output(name)]) for name in self.output_names}


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
        settings: dict[str, Any] = {"device": "CPU", "config": _config(options.precision, options.hint, options.threads, options.streams)}
        precision = options.precision
        if options.int8 == "nncf":
            if manifest.precision == "int8":
                raise ConfigError(
                    "int8=nncf quantizes an FP32 model, and this model is already INT8",
                    hint="drop int8=nncf: the INT8 graph compiles as it is",
                )
            from edgekit.build.ptq import TOLERANCE, calibration_feeds, check_fidelity, fp32_runner, nncf_quantize

            feeds, calib = calibration_feeds(onnx_dir, manifest, options.calibration, options.samples)
            model = nncf_quantize(model, feeds)
            fidelity = None
            if manifest.static_shape is None:
                compiled = ov.Core().compile_model(model, "CPU", settings["config"])
                fidelity = check_fidelity(
                    fp32_runner(onnx_dir, manifest),
                    lambda f: np.array(compiled(f)[0]),
                    onnx_dir,
                    manifest,
                    options.calibration,
                    options.samples,
                    "openvino-cpu NNCF INT8",
                )
                del compiled
            settings["ptq"] = {
                "method": "nncf.quantize",
                "model_type": "transformer",
                "preset": "mixed",
                "calibration": calib,
                "nncf": _version("nncf"),
                "fidelity": fidelity,
            }
            settings["tolerance"] = TOLERANCE.model_dump()
        int8 = options.int8 == "nncf" or manifest.precision == "int8"
        if int8:
            precision = "int8"  # int8 matmuls; the other ops run at INFERENCE_PRECISION_HINT (f32 unless asked)
            settings["int8"] = check_int8(model, settings["config"], onnx_dir, manifest)
        buckets = plan_buckets(onnx_dir, manifest, options)
        if buckets:
            settings["buckets"], settings["bucket_source"] = buckets
        ov.save_model(model, str(out / MODEL_FILE), compress_to_fp16=options.precision == "fp16")
        if manifest.settings.get("packed"):  # the source's low-bit weights were packed: so are the IR's
            packed = packing.pack_ir(out / MODEL_FILE, out / MODEL_FILE.replace(".xml", ".bin"), out)
            if packed is not None:
                settings["packed"] = packed
        return {
            "model_file": MODEL_FILE,
            "precision": precision,
            "runtime": {"openvino": runtime_version(ov)},
            "settings": settings,
        }

    def runs_here(self) -> str | None:
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OpenVinoSession:
        config = dict(manifest.settings.get("config", {}))
        if options is not None and options.threads:
            config["INFERENCE_NUM_THREADS"] = str(options.threads)
        return OpenVinoSession(
            Path(artifact_dir) / manifest.model_file,
            config,
            buckets=manifest.settings.get("buckets"),
            pad_id=manifest.tokenizer.pad_id,
            packed=manifest.settings.get("packed"),
        )


def _version(dist: str) -> str | None:
    from edgekit.deps import version_of

    return version_of(dist)


def plan_buckets(onnx_dir: Path, manifest: Manifest, options: OpenVinoOptions) -> tuple[list[int], str] | None:
    """(sequence buckets, where they came from), or None for dynamic shapes."""
    if options.buckets is None and options.buckets_from is None:
        return None
    if manifest.static_shape:
        raise ConfigError(
            f"the model was exported with the static shape {manifest.static_shape}; it has no sequence buckets",
            hint="export with dynamic shapes to use buckets",
        )
    max_length = manifest.tokenizer.max_length
    if options.buckets is not None:
        too_long = [b for b in options.buckets if b > max_length]
        if too_long:
            raise ConfigError(
                f"sequence bucket {too_long[0]} exceeds the model's max length {max_length}", hint=f"use buckets <= {max_length}"
            )
        buckets, source = options.buckets, "option buckets"
    else:
        from edgekit.deploy import data
        from edgekit.deploy.tokenizer import Tokenizer

        lengths = Tokenizer(onnx_dir, manifest).lengths(data.read_texts(options.buckets_from))
        buckets = data_buckets(lengths, max_length)
        source = f"p50/p90/max token length of {len(lengths)} texts in {options.buckets_from}, plus the powers of two between"
    return buckets, source


def data_buckets(lengths: list[int], max_length: int) -> list[int]:
    """Sequence buckets for a length histogram: p50, p90 and max (rounded up to 16, as for the NPU),
    plus every power of two between p50 and max, so no input is padded to more than twice its
    length and the common 64/128/256 shapes are buckets of their own."""
    from edgekit.deploy.targets.openvino_npu import buckets_from_lengths

    picks = buckets_from_lengths(lengths, max_length)
    powers = [p for p in (16, 32, 64, 128, 256, 512, 1024, 2048) if picks[0] < p < picks[-1] and p <= max_length]
    return sorted(set(picks) | set(powers))


def check_int8(model: Any, config: dict[str, str], onnx_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """Compile ``model`` on the CPU plugin and read which matmuls run in INT8; raise if quantized ones fall back."""
    ov = require("openvino", for_="target openvino-cpu")
    from edgekit.deploy import int8check

    expected = None
    if manifest.precision == "int8":
        try:
            import onnx

            expected = len(int8check.quantized_matmuls(onnx.load(str(onnx_dir / manifest.model_file))))
        except ImportError:
            expected = None
    compiled = ov.Core().compile_model(model, "CPU", config)
    report = int8check.openvino_report(compiled, expected)
    # Lowered binary/ternary graphs exist to run in INT8: a fallback is an error. A PTQ graph
    # made for another runtime may keep some matmuls in float here: recorded, not refused.
    strict = "lowered" in manifest.settings
    if report["int8"] == 0 or (strict and report.get("all_int8") is False):
        report.setdefault("expected_int8", expected or "some")
        raise TargetError(
            f"openvino-cpu: {int8check.fallback_message('OpenVINO CPU', report)}",
            hint="this scheme cannot execute in INT8 on OpenVINO; quantize the activations of those matmuls (A8/A4/A1)",
        )
    if report.get("all_int8") is False:
        report["note"] = int8check.fallback_message("OpenVINO CPU", report)
    return report

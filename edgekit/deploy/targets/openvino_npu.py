"""Target ``openvino-npu``: static-shape OpenVINO IR per sequence bucket, for the Intel NPU.

The NPU compiles only static shapes, so one IR is written per ``[batch, seq]`` bucket
(``model_s64.xml``, ``model_s128.xml``, ...). Each is checked before it ships: every
tensor static after the reshape, and no op the NPU compiler cannot place. Where OpenVINO
sees an NPU, each bucket is compiled for it and the compiled blob is exported beside the
IR (``model_s128.blob``); elsewhere the artifact is the IR alone and its manifest says
that NPU compilation is still to do. A session pads every batch to the smallest bucket
that holds it.
"""

from __future__ import annotations

import contextlib
import filecmp
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgekit.deploy import parity
from edgekit.deploy.artifact import Manifest, TensorSpec
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deploy.targets.shapes import (
    DataFile,
    SeqLens,
    check_reference_fits,
    plan_seq_lens,
    refuse_on_static_export,
    row_lengths,
    run_in_buckets,
)
from edgekit.deps import require
from edgekit.errors import ConfigError, TargetError

DEVICE = "NPU"
PENDING = "NPU compilation needs the Intel NPU driver; the IR is ready"
LOAD_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}
# Ops whose output shape depends on the data, or that need control flow: a static-shape
# compiler cannot place them, so the NPU plugin cannot run them. Checked on every machine;
# where an NPU is present, ``core.query_model`` (the plugin's own answer) is checked too.
NOT_ON_NPU = frozenset(
    {
        "Loop",
        "TensorIterator",
        "If",
        "NonZero",
        "Unique",
        "NonMaxSuppression",
        "MatrixNms",
        "MulticlassNms",
        "StringTensorPack",
        "StringTensorUnpack",
    }
)
_QUANT_OPS = frozenset({"FakeQuantize", "FakeConvert"})


class NpuOptions(TargetOptions):
    batch: int = Field(1, ge=1, description="static batch size of every bucket")
    seq_lens: SeqLens = None
    data: DataFile = None
    precision: Literal["fp16", "int8"] = "fp16"
    cache_dir: str | None = Field(None, description="OpenVINO CACHE_DIR for IRs compiled at load time")


def plan_buckets(onnx_dir: Path, manifest: Manifest, options: NpuOptions) -> tuple[int, list[int], str]:
    """(batch, sequence buckets, where they came from) for this model and these options."""
    static = manifest.static_shape
    if static:
        # A static export has its shape baked into the graph: it is the only bucket.
        refuse_on_static_export(manifest, options.seq_lens, options.data, OpenVinoNpuTarget.name)
        if "batch" in options.model_fields_set and options.batch != static[0]:
            raise ConfigError(
                f"{OpenVinoNpuTarget.name}: the model was exported with the static shape {static}; it cannot take batch {options.batch}",
                hint="drop batch, or export with dynamic shapes",
            )
        return static[0], [static[1]], "the model's static shape"
    seq = plan_seq_lens(onnx_dir, manifest, options.seq_lens, options.data)
    if seq is None:
        max_length = manifest.tokenizer.max_length
        raise ConfigError(
            "a dynamic model sent to the NPU: the NPU runs only static shapes and no sequence lengths were given",
            hint=f"pass seq_lens (e.g. --option seq_lens={','.join(map(str, sorted({min(128, max_length), max_length})))}) or data=<texts file>, or export with --static-shape",
        )
    return options.batch, seq.lengths, seq.source


def ir_tolerance(precision: str) -> parity.Tolerance:
    """fp16 weights: the fp16 tolerance. int8: parity's int8 entry once it has one, else the bf16 one."""
    return parity.TOLERANCES.get(precision) or parity.TOLERANCES["bf16"]


def check_ir_on_cpu(out: Path, manifest: Manifest, onnx_dir: Path, core: Any, precision: str) -> dict[str, Any] | None:
    """Run the static IRs on OpenVINO's CPU plugin (fp32) against PyTorch's parity reference
    (the texts that fit the largest bucket): proves the reshape before the IR ships. Raises
    ParityError on a mismatch; None where OpenVINO has no CPU device."""
    if "CPU" not in core.available_devices:
        return None
    feed, reference = parity.load_reference(onnx_dir / parity.REFERENCE)
    fits = row_lengths(feed, manifest.tokenizer.pad_id) <= manifest.static_shape[1]
    if not fits.any():
        return None
    with NpuSession(out, manifest, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"}) as session:
        output = manifest.outputs[0].name
        actual = session.infer({k: v[fits] for k, v in feed.items()})[output]
    report = parity.compare(
        reference[fits],
        actual,
        task=manifest.task,
        output=output,
        runtime="openvino-npu IR on the CPU plugin",
        tolerance=ir_tolerance(precision),
    )
    return {"device": "CPU", "skipped_longer_texts": int((~fits).sum()), **parity.enforce(report).model_dump()}


def unsupported_ops(model: Any, core: Any = None) -> list[str]:
    """Op types in ``model`` that the NPU cannot run: the known list, plus the plugin's own
    ``query_model`` answer when ``core`` sees an NPU."""
    ops = list(model.get_ops())
    bad = {op.get_type_name() for op in ops if op.get_type_name() in NOT_ON_NPU}
    if core is not None and DEVICE in core.available_devices:
        placed = core.query_model(model, DEVICE)
        bad |= {op.get_type_name() for op in ops if op.get_friendly_name() not in placed}
    return sorted(bad)


def is_quantized(model: Any, ov: Any) -> bool:
    """True if the graph carries INT8 (or lower) quantization: QDQ / FakeQuantize, or integer weights."""
    low = {ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4}
    for op in model.get_ops():
        name = op.get_type_name()
        if name in _QUANT_OPS or (name == "Constant" and op.get_output_element_type(0) in low):
            return True
    return False


def _blob_bytes(exported: Any) -> bytes:
    return exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)


def _device_info(core: Any) -> dict[str, str]:
    info = {}
    for prop in ("FULL_DEVICE_NAME", "DEVICE_ARCHITECTURE", "NPU_DRIVER_VERSION", "NPU_COMPILER_VERSION"):
        with contextlib.suppress(Exception):  # a property a driver does not report is left out
            info[prop] = str(core.get_property(DEVICE, prop))
    return info


class NpuSession:
    """One compiled model per bucket; each call runs on the smallest bucket that fits."""

    def __init__(
        self,
        artifact_dir: Path,
        manifest: Manifest,
        *,
        device: str | None = None,
        cache_dir: str | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        """``device``/``config`` other than the NPU's are for checking the IR elsewhere (tests run it on the CPU)."""
        ov = require("openvino", for_="target openvino-npu")
        device = device or DEVICE
        core = ov.Core()
        settings = manifest.settings
        self.batch = manifest.static_shape[0]
        self.buckets = sorted(int(s) for s in settings["models"])
        self.pad_id = manifest.tokenizer.pad_id
        self.used: dict[int, str] = {}  # bucket -> "blob" or "ir": how it was loaded
        config = {**settings.get("config", LOAD_CONFIG), **(config or {})}
        self._compiled, self._requests = {}, {}
        for s in self.buckets:
            files = settings["models"][str(s)]
            blob = files.get("blob")
            compiled = None
            if blob and device == DEVICE:
                try:
                    compiled = core.import_model((Path(artifact_dir) / blob).read_bytes(), device, config)
                    self.used[s] = "blob"
                except RuntimeError:
                    compiled = None  # blob from another driver/compiler version: compile the IR instead
            if compiled is None:
                cfg = {**config, "CACHE_DIR": cache_dir} if cache_dir else config
                xml = Path(artifact_dir) / files["xml"]
                weights = files.get("bin")  # buckets share one weights file (artifacts before it: beside each xml)
                if weights and weights != xml.with_suffix(".bin").name:
                    compiled = core.compile_model(core.read_model(str(xml), str(Path(artifact_dir) / weights)), device, cfg)
                else:
                    compiled = core.compile_model(str(xml), device, cfg)
                self.used[s] = "ir"
            self._compiled[s], self._requests[s] = compiled, compiled.create_infer_request()
        first = self._compiled[self.buckets[0]]
        self.input_names = [p.get_any_name() for p in first.inputs]
        self.output_names = [p.get_any_name() for p in first.outputs]
        self.last_bucket: int | None = None

    def __enter__(self) -> NpuSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._requests, self._compiled = {}, {}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_in_buckets(feed, self.batch, self.buckets, self.pad_id, self._run)

    def _run(self, bucket: int, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.last_bucket = bucket
        result = self._requests[bucket].infer(feed)
        compiled = self._compiled[bucket]
        # Copy: the request reuses its output buffers on the next call.
        return {name: np.array(result[compiled.output(name)]) for name in self.output_names}


class OpenVinoNpuTarget:
    name: ClassVar[str] = "openvino-npu"
    runtime: ClassVar[str] = "openvino"
    description: ClassVar[str] = "OpenVINO on the Intel NPU: one static-shape IR (and compiled blob) per sequence bucket"
    options_model: ClassVar[type[TargetOptions]] = NpuOptions
    static_shapes: ClassVar[bool] = True
    model_suffixes: ClassVar[tuple[str, ...]] = (".xml",)

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        return {}  # the NPU plugin takes no per-device settings edgekit records

    def check_available(self) -> None:
        # The IR is written on any machine with openvino; the NPU itself is needed only to
        # compile the blobs and to run (see executable_here).
        require("openvino", for_=f"target {self.name}")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: NpuOptions, out: Path) -> dict[str, Any]:
        ov = require("openvino", for_=f"target {self.name}")
        batch, seqs, source = plan_buckets(onnx_dir, manifest, options)
        core = ov.Core()
        on_npu = DEVICE in core.available_devices
        if on_npu:  # parity runs right after compile, on the NPU
            check_reference_fits(onnx_dir, manifest, seqs[-1], "sequence bucket")
        model = ov.convert_model(str(onnx_dir / manifest.model_file))
        if options.precision == "int8" and not is_quantized(model, ov):
            raise ConfigError(
                "precision int8 needs an INT8 (QDQ) model, and this ONNX model is float",
                hint="run the PTQ/lowering step first (quant method ptq-int8, or ternary/binary lowered to QDQ), or use precision fp16",
            )
        models = {}
        for s in seqs:
            m = model.clone()
            try:
                m.reshape({p.get_any_name(): [batch, s] for p in m.inputs})
            except RuntimeError as err:
                raise TargetError(
                    f"{self.name}: cannot reshape the model to [{batch}, {s}]: {str(err).strip().splitlines()[-1]}",
                    hint="export with dynamic shapes",
                ) from err
            dynamic = [p.get_any_name() for p in [*m.inputs, *m.outputs] if p.get_partial_shape().is_dynamic]
            if dynamic or m.is_dynamic():
                raise TargetError(
                    f"{self.name}: shapes still dynamic after reshaping to [{batch}, {s}] ({', '.join(dynamic) or 'inner tensors'})",
                    hint="the NPU needs every shape static; export with --static-shape",
                )
            bad = unsupported_ops(m, core)
            if bad:
                raise TargetError(f"{self.name}: ops the NPU cannot run: {', '.join(bad)}", hint="use openvino-cpu for this model")
            xml, weights = f"model_s{s}.xml", f"model_s{s}.bin"
            ov.save_model(m, str(out / xml), compress_to_fp16=True)
            # Reshaping changes no constant: every bucket's .bin is the same bytes. Ship one
            # (measured: a MiniLM-L6 INT8 IR is 55 MB a bucket).
            shared = next((f["bin"] for f in models.values() if filecmp.cmp(out / f["bin"], out / weights, shallow=False)), None)
            if shared is not None:
                (out / weights).unlink()
                weights = shared
            blob = None
            if on_npu:
                # Compiled from the IR as shipped. No CACHE_DIR here: a model loaded from the
                # cache may export a blob that does not import (seen with OpenVINO's CPU plugin).
                compiled = core.compile_model(core.read_model(str(out / xml), str(out / weights)), DEVICE, LOAD_CONFIG)
                blob = f"model_s{s}.blob"
                (out / blob).write_bytes(_blob_bytes(compiled.export_model()))
            models[str(s)] = {"xml": xml, "bin": weights, "blob": blob}
        shape = [batch, seqs[-1]]
        ir_check = check_ir_on_cpu(
            out, manifest.model_copy(update={"static_shape": shape, "settings": {"models": models}}), onnx_dir, core, options.precision
        )
        return {
            "model_file": models[str(seqs[-1])]["xml"],
            "precision": options.precision,
            "runtime": {"openvino": runtime_version(ov)},
            "static_shape": shape,
            "inputs": [TensorSpec(name=t.name, shape=shape, dtype=t.dtype) for t in manifest.inputs],
            "outputs": [TensorSpec(name=t.name, shape=[batch, *t.shape[1:]], dtype=t.dtype) for t in manifest.outputs],
            "pending": None if on_npu else PENDING,
            "settings": {
                "device": DEVICE,
                "buckets": [[batch, s] for s in seqs],
                "bucket_source": source,
                "models": models,
                "config": dict(LOAD_CONFIG),
                "weights": "fp16 (compress_to_fp16)" + (", int8 from the QDQ model" if options.precision == "int8" else ""),
                "op_check": f"known list{' + query_model(NPU)' if on_npu else ''}",
                "npu": _device_info(core) if on_npu else None,
                "cache_dir": options.cache_dir,
                "ir_check": ir_check,
            },
        }

    def executable_here(self, manifest: Manifest) -> str | None:
        return self.runs_here()

    def runs_here(self) -> str | None:
        try:
            import openvino as ov
        except ImportError:
            return "openvino is not installed"
        devices = ov.Core().available_devices
        if DEVICE not in devices:
            return f"no Intel NPU here (OpenVINO sees: {', '.join(devices) or 'no device'})"
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> NpuSession:
        cache_dir = getattr(options, "cache_dir", None) or manifest.settings.get("cache_dir")
        return NpuSession(Path(artifact_dir), manifest, device=DEVICE, cache_dir=cache_dir)

"""Target ``openvino-cpu``: OpenVINO IR (``convert_model`` + ``save_model``) run on the CPU plugin.

INT8: a QDQ source (``edgekit lower``, ``edgekit ptq``) becomes an IR with FakeQuantize and
int8 weights (NNCF's PTQ, :func:`edgekit.build.ptq.quantize_nncf`, hands this target an
already quantized ``ov.Model`` through :meth:`OpenVinoCpuTarget.save`). Either way compile
compiles the IR on the CPU plugin and reads the runtime model's execution precisions
(:func:`edgekit.deploy.int8check.openvino_report`); in a lowered binary/ternary graph, quantized
matmuls that would run in float are an error naming them (in a PTQ graph they are recorded).
Before that, per-tensor FakeQuantize nodes behind a Reshape/Transpose (a lowered encoder's Q/K/V and
attention-output quantizers) are moved above it, where the CPU plugin folds them into FullyConnected
and the attention Subgraph (:mod:`edgekit.deploy.targets.openvino_fq`; the same function, recorded as
``settings.fake_quantize_hoisted``). Measured (bench/ov_fq_hoist.py, MiniLM W2E2A8 lowered, 2-core
shared x86, seven interleaved runs): 24 of 48 standalone FakeQuantize nodes gone; wall time after/before
0.92-1.03 at b1 real length, 0.95-0.99 at b1 s128, 0.88-0.96 at b32 s128. Then the signed activation
quantizers of the int8 matmuls are moved onto the u8 grid with a per-column bias correction (the same codes;
``unsigned=on``, default; recorded as ``settings.fake_quantize_unsigned``): oneDNN's int8 matmul takes u8
activations natively, as in NNCF's IR. Measured (bench/ov_fq_hoist.py --step unsigned, MiniLM W2E2A8 lowered,
2-core Xeon with AVX-512 VNNI, no AMX, 30 interleaved rounds): wall time 0.96x at b1 real length, 0.93x at
b1 s128, 0.93x at b32 s128; against the fake-quant model the u8 graph was as close as the i8 one (32
parity texts: 13 rows over 0.05 against 22). Binary activations stay i8 (the shift's rounding flips signs
at the next binarizer: :func:`openvino_fq.unsign_fake_quantize`).

Sequence buckets (``seq_lens=64,128``, or ``data=<texts file>``: the ``max_buckets`` lengths, default 8, on a
16-token grid that pad its texts least, :func:`shapes.least_padding`): single inputs run on a model compiled at
[1, s] for the smallest bucket that holds them, compiled at load; a call of several rows runs a [-1, s] model,
compiled on the first such call of its bucket; a longer input runs on the dynamic-shape model, compiled on first
use. Each compiled model holds its own copy of the compiled weights (~30 MB for MiniLM-L6 INT8). Measured
(bench/ov_shapes.py, MiniLM W2E2A8 lowered, 120 real dev texts of 66 tokens on average, 2-core AMD EPYC, 4
interleaved rounds): 8 least-padding buckets 4.28 ms at batch 1, the p50/p90/max + powers-of-two buckets
[-1, s] used before 4.99 ms, dynamic shapes 5.27 ms; at 128 tokens 6.11 against 7.28 and 7.44 ms.

1-bit kernel (``xnor=on|auto``, default off): a lowered W1A1 graph's binary matmuls run as the
``BinaryMatMul`` XNOR/popcount extension (:mod:`edgekit.deploy.kernels.openvino_xnor`), shipped in the
artifact and loaded into the session's Core; each FFN's two binary matmuls pass packed bits, not floats
(:func:`edgekit.deploy.kernels.rewrite.fuse_bits`), and each BiT self-attention runs as one
``BinaryAttention`` on the Q/K/V matmuls' bits (:func:`edgekit.deploy.kernels.rewrite.fuse_attention`).
Measured (bench/bench_xnor.py --compiled, trained MiniLM W1E1A1 artifacts xnor=on vs xnor=off, 2 threads,
5 interleaved rounds, 2-core AMD EPYC with AVX-512 VPOPCNTDQ): 0.54x the time at batch 1 / 16 tokens,
0.38x at b1 s128, 0.33x at b32 s128; ``tune=auto`` keeps it only where it is faster on the CPU at hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from edgekit.deploy import int8check, packing
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.kernels import openvino_xnor, xnor
from edgekit.deploy.targets import openvino_fq
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deploy.targets.shapes import DataFile, SeqLens, fit_feed, least_padding, pick_bucket, plan_seq_lens, used_length
from edgekit.deps import is_installed, require
from edgekit.errors import ConfigError, TargetError

MODEL_FILE = "model.xml"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoOptions(TargetOptions):
    # fp32 by default: on CPUs with AMX or AVX512-BF16, OpenVINO otherwise computes in bf16,
    # which is faster but is not what parity against fp32 PyTorch measures.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    streams: int | None = None
    seq_lens: SeqLens = None  # static sequence buckets (default: dynamic shapes)
    data: DataFile = None
    # with data: how many sequence lengths to compile (each holds its own copy of the compiled weights)
    max_buckets: int = Field(default=8, ge=1, le=32)
    # the 1-bit XNOR/popcount kernel for W1A1 graphs: on (required), auto (where it builds here), off
    xnor: Literal["off", "auto", "on"] = "off"
    # signed activation quantizers of int8 matmuls moved onto the u8 grid (the same codes; openvino_fq)
    unsigned: Literal["on", "off"] = "on"

    @model_validator(mode="after")
    def _buckets_from_data(self) -> OpenVinoOptions:
        # compared with the default, not read from the fields set: the tuner rebuilds options from a full dump
        changed = self.max_buckets != type(self).model_fields["max_buckets"].default
        if self.seq_lens is not None and changed:
            raise ValueError("max_buckets picks the lengths from data; with seq_lens you give them: drop one")
        if self.data is None and changed:  # it would be ignored: dynamic shapes
            raise ValueError("max_buckets picks that many lengths from data: add data=FILE, or drop max_buckets")
        return self


def runtime_config(options: OpenVinoOptions) -> dict[str, str]:
    """The CPU plugin's compile config for these options (recorded in the manifest, used by every session)."""
    cfg = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[options.precision], "PERFORMANCE_HINT": options.hint}
    if options.threads:
        cfg["INFERENCE_NUM_THREADS"] = str(options.threads)
    if options.streams:
        cfg["NUM_STREAMS"] = str(options.streams)
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
        xnor_kernel: tuple[Path, dict[str, Any]] | None = None,
    ) -> None:
        """``packed``: the manifest's ``settings.packed`` (low-bit constants cut out of the .bin: packing.pack_ir).
        ``xnor_kernel``: (artifact dir, the manifest's ``settings.kernels.xnor``), the 1-bit kernel the IR runs."""
        ov = require("openvino", for_="target openvino-cpu")
        core = ov.Core()
        self.notes: list[str] = []
        if xnor_kernel is not None:
            _, note = openvino_xnor.load_into(core, xnor_kernel[0], xnor_kernel[1], runtime_version(ov))
            if note:
                self.notes.append(note)
                print(f"note: {note}", file=sys.stderr)
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
        # Buckets: single inputs run on models compiled at [1, s], eagerly (the latency path); a call of several
        # rows runs a [-1, s] model, compiled on the first such call of that bucket (bench/ov_shapes.py: fixing the
        # batch too made batch-1 calls 0.89-0.94x the time of [-1, s] models; each compiled model holds ~30 MB for MiniLM).
        self._single: dict[int, tuple[Any, Any]] = {}
        self._batched: dict[int, tuple[Any, Any]] = {}
        self._model: Any = None
        if self.buckets:
            self._model = core.read_model(self._source) if isinstance(self._source, str) else self._source
            self._single = {s: self._compile_at(1, s) for s in self.buckets}
            self._compiled, self._request = self._single[self.buckets[-1]]
        else:
            self._compiled = core.compile_model(self._source, device, config)
            self._request = self._compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self._scalars = {p.get_any_name() for p in self._compiled.inputs if p.get_partial_shape().rank.get_length() == 0}
        self.output_names = [p.get_any_name() for p in self._compiled.outputs]

    @property
    def compiled(self) -> Any:
        return self._compiled

    def _compile_at(self, batch: int, seq: int) -> tuple[Any, Any]:
        """The model compiled with its [batch, seq] inputs at that shape (-1: dynamic), and its infer request.
        Inputs of another rank (the scalars of calibration's exit timing graph) keep their shape."""
        ov = require("openvino", for_="target openvino-cpu")
        m = self._model.clone()
        m.reshape({p.get_any_name(): ov.PartialShape([batch, seq]) for p in m.inputs if p.get_partial_shape().rank.get_length() == 2})
        compiled = self._core.compile_model(m, self._device, self._config)
        return compiled, compiled.create_infer_request()

    def __enter__(self) -> OpenVinoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = self._compiled = self._dynamic = self._model = None
        self._single, self._batched = {}, {}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled, request = self._compiled, self._request
        if self.buckets:
            rows = feed["attention_mask"].shape[0] if "attention_mask" in feed else feed["input_ids"].shape[0]
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
                if self._scalars:
                    # a static model takes its scalar inputs (calibration's timing graph) at shape [] only, and the
                    # binding sends a 0-d array as [1]: a tensor keeps the shape
                    ov = require("openvino", for_="target openvino-cpu")
                    feed = {k: ov.Tensor(np.asarray(v).reshape(())) if k in self._scalars else v for k, v in feed.items()}
                if rows == 1:
                    compiled, request = self._single[s]
                else:
                    if s not in self._batched:
                        self._batched[s] = self._compile_at(-1, s)
                    compiled, request = self._batched[s]
        result = request.infer(feed)
        # Copy: the request reuses its output buffers on the next call.
        return {name: np.array(result[compiled.output(name)]) for name in self.output_names}

    def infer_linked(self, feed: dict[str, Any], carry: str | None = None, fetch: bool = True) -> tuple[dict[str, np.ndarray], Any]:
        """One call on this session's own infer request, for sessions run one after another.

        ``feed`` values are numpy arrays or tensors an earlier ``infer_linked`` returned: both are
        set on the request without a copy (``share_inputs``). The output ``carry`` comes back as
        the request's own ``ov.Tensor``, to be set as the next request's input; the other outputs
        as numpy copies when ``fetch``. Dynamic-shape sessions only (no sequence buckets).
        """
        if self.buckets:
            raise TargetError("linked calls need a dynamic-shape session", hint="compile without seq_lens/data")
        request = self._request
        request.infer(feed, share_inputs=True, share_outputs=True)
        carried = request.get_tensor(carry) if carry else None
        if not fetch:
            return {}, carried
        return {name: np.array(request.get_tensor(name).data) for name in self.output_names if name != carry}, carried

    @staticmethod
    def take_rows(value: Any, rows: np.ndarray) -> np.ndarray:
        """Rows of a tensor ``infer_linked`` carried (a numpy copy: only when some rows left the batch)."""
        return value.data[rows]


class OpenVinoCpuTarget:
    name: ClassVar[str] = "openvino-cpu"
    runtime: ClassVar[str] = "openvino"
    description: ClassVar[str] = "OpenVINO IR on the CPU plugin"
    options_model: ClassVar[type[TargetOptions]] = OpenVinoOptions
    static_shapes: ClassVar[bool] = False
    model_suffixes: ClassVar[tuple[str, ...]] = (".xml",)

    def check_available(self) -> None:
        ov = require("openvino", for_=f"target {self.name}")
        if "CPU" not in ov.Core().available_devices:
            raise TargetError("OpenVINO reports no CPU device here", hint="check the OpenVINO installation")

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        return {"threads": profile.threads} if profile.threads else {}

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OpenVinoOptions, out: Path) -> dict[str, Any]:
        ov = require("openvino", for_=f"target {self.name}")
        source = onnx_dir / manifest.model_file
        kernel, not_used = (None, None)
        if options.xnor != "off":
            kernel, not_used = openvino_xnor.plan(source, options.xnor, self.name)
        if kernel is None:
            model = ov.convert_model(str(source))
            moves, unsigned = place_fake_quantize(model, options)
            fields = self.save(model, onnx_dir, manifest, options, out)
            if not_used:
                fields["settings"]["kernels"] = {"xnor": {"used": False, "reason": not_used}}
        else:
            core = ov.Core()
            model = openvino_xnor.read(core, kernel)  # the Core holds the kernel: the IR is read, checked, saved with it
            moves, unsigned = place_fake_quantize(model, options)
            shipped = openvino_xnor.ship(kernel, out, runtime_version(ov))
            fields = self.save(model, onnx_dir, manifest, options, out)
            fields["settings"]["kernels"] = {"xnor": shipped}
        if moves:
            fields["settings"]["fake_quantize_hoisted"] = moves
        if unsigned:
            fields["settings"]["fake_quantize_unsigned"] = unsigned
        return fields

    def save(
        self, model: Any, onnx_dir: Path, manifest: Manifest, options: OpenVinoOptions, out: Path, *, int8: bool = False
    ) -> dict[str, Any]:
        """Write ``model`` (an ``ov.Model`` of ``manifest``'s graph) as this target's artifact files in ``out``;
        return the manifest fields. ``int8``: the model is INT8 although its ONNX source is not (NNCF PTQ)."""
        ov = require("openvino", for_=f"target {self.name}")
        settings: dict[str, Any] = {"device": "CPU", "config": runtime_config(options)}
        precision = options.precision
        if int8 or manifest.precision == "int8":
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

    def tune_candidates(self, options: OpenVinoOptions, manifest: Manifest) -> list[dict[str, Any]]:
        """Variants for compile's autotuner, those most likely to pay first (the budget may run out before the
        last): the 1-bit kernel (W1A1 graphs, where it builds here), two streams, dynamic shapes where sequence
        buckets were asked for, the int8 matmuls' activations left signed (an INT8 graph), the THROUGHPUT hint,
        then bf16/fp16 inference precision where this CPU reports it (last: they change the numerics, often fail parity on lowered graphs, and fp16 ran a lowered MiniLM
        at seconds a call on a Xeon that reports FP16)."""
        ov = require("openvino", for_=f"target {self.name}")
        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        cands: list[dict[str, Any]] = []
        if manifest is not None and "lowered" in manifest.settings:  # binary weights exist only in lowered graphs
            cands.append(xnor_candidate(manifest))
        cands.append({"name": "streams=2", "options": {"streams": 2}})
        if options.seq_lens is not None or options.data is not None:
            # the buckets asked for are what is tuned here: timed against dynamic shapes on the same lengths
            cands.append({"name": "dynamic shapes", "options": {"seq_lens": None, "data": None}, "replaces": ["seq_lens", "data"]})
        if manifest is not None and manifest.precision == "int8" and options.unsigned == "on":
            cands.append({"name": "unsigned=off", "options": {"unsigned": "off"}, "needs": "fake_quantize_unsigned"})
        cands.append({"name": "hint=THROUGHPUT", "options": {"hint": "THROUGHPUT"}})
        for precision, cap in (("bf16", "BF16"), ("fp16", "FP16")):
            cand: dict[str, Any] = {"name": f"precision={precision}", "options": {"precision": precision}}
            if cap not in caps:
                cand["skip"] = f"this CPU has no {cap} compute (OpenVINO CPU capabilities: {', '.join(sorted(caps))})"
            cands.append(cand)
        return cands

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
            xnor_kernel=(Path(artifact_dir), kernel) if (kernel := _xnor_record(manifest)) else None,
        )


def place_fake_quantize(model: Any, options: OpenVinoOptions) -> tuple[int, int]:
    """Put ``model``'s activation quantizers where the CPU plugin fuses them and on the grid its int8 matmuls
    run fastest (:mod:`edgekit.deploy.targets.openvino_fq`); return (moves above data movement, moved to u8)."""
    moves = openvino_fq.hoist_fake_quantize(model)
    unsigned = openvino_fq.unsign_fake_quantize(model) if options.unsigned == "on" else 0
    return moves, unsigned


def xnor_candidate(manifest: Manifest) -> dict[str, Any]:
    """The tuning candidate ``xnor=on`` for a lowered graph: skipped, with the reason, unless its
    weights and activations are 1-bit (the lowering's recorded config) and the kernel builds here."""
    cand: dict[str, Any] = {"name": "xnor=on", "options": {"xnor": "on"}}
    lowered = manifest.settings.get("lowered") or {}
    config = lowered.get("config") or {}
    if (config.get("weight_bits"), config.get("activation_bits")) != (1, 1):
        cand["skip"] = f"the model is not W1A1 (lowered {lowered.get('scheme', '?')})"
        return cand
    avail = xnor.availability()
    if not avail.available:
        cand["skip"] = avail.reason
    return cand


def _xnor_record(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's ``settings.kernels.xnor`` where the IR runs the 1-bit kernel (None if it does not)."""
    record = (manifest.settings.get("kernels") or {}).get("xnor")
    return record if isinstance(record, dict) and record.get("library") else None


def plan_buckets(onnx_dir: Path, manifest: Manifest, options: OpenVinoOptions) -> tuple[list[int], str] | None:
    """(sequence buckets, where they came from), or None for dynamic shapes."""
    if not options.sequence_buckets:
        return None
    if manifest.static_shape:
        raise ConfigError(
            f"the model was exported with the static shape {manifest.static_shape}; it has no sequence buckets",
            hint="export with dynamic shapes to use seq_lens or data",
        )
    seq = plan_seq_lens(onnx_dir, manifest, options.seq_lens, options.data)
    if seq.observed is None:
        return seq.lengths, seq.source
    lengths = least_padding(seq.observed, manifest.tokenizer.max_length, options.max_buckets)
    return (
        lengths,
        f"the {len(lengths)} lengths that pad the {len(seq.observed)} texts of {options.data} least (max_buckets={options.max_buckets})",
    )


def check_int8(model: Any, config: dict[str, str], onnx_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """Compile ``model`` on the CPU plugin and read which matmuls run in INT8; raise if quantized ones fall back."""
    ov = require("openvino", for_="target openvino-cpu")
    expected = None
    if manifest.precision == "int8" and is_installed("onnx"):
        onnx = require("onnx", for_="counting the quantized matmuls")
        expected = len(int8check.quantized_matmuls(onnx.load(str(onnx_dir / manifest.model_file))))
    core = ov.Core()
    compiled = core.compile_model(model, "CPU", config)
    # an If (the one-graph exit model) runs its branches as graphs of their own: each is compiled to be read
    body_models = int8check.if_bodies(model)
    bodies = [core.compile_model(body, "CPU", config) for body in body_models]
    report = int8check.openvino_report(compiled, expected, bodies)
    binary = openvino_xnor.count_binary(model, compiled) + sum(openvino_xnor.count_binary(b, c) for b, c in zip(body_models, bodies))
    if binary:  # the 1-bit kernel's XNOR/popcount matmuls are integer execution too
        report["int8"] += binary
        report["binary_matmul_nodes"] = binary
        if expected is not None:
            report["all_int8"] = report["int8"] >= expected
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

"""Target ``ort-cpu``: ONNX Runtime on the CPU, graph optimizations applied offline and saved.

INT8 artifacts (``edgekit lower``, ``edgekit ptq``): compile asks ONNX Runtime which of the
quantized matmuls it fuses into integer kernels (:mod:`edgekit.deploy.int8check`), records the
answer, and refuses a lowered binary/ternary graph where some would run in float, naming
them (a PTQ graph's fallbacks are recorded, not refused); a source with packed low-bit weights
gives a packed artifact too (the optimized graph's int8 codes, 2 or 1 bits each), unpacked
and hash-checked when a session opens it.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgekit.deploy import int8check, packing
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.targets import ort_fusion
from edgekit.deploy.targets.base import TargetOptions, runtime_version
from edgekit.deps import is_installed, require
from edgekit.errors import TargetError

MODEL_FILE = "model.ort-opt.onnx"

# The first ONNX Runtime whose CPU provider runs com.microsoft MatMulNBits, by weight bits (None:
# the operator itself, with its accuracy_level attribute). The operator and its 4-bit kernel came
# in 1.17.0 (onnxruntime PR 17890; accuracy_level, PR 17669); 8-bit weights in 1.22.0 (PR 24384);
# 2-bit weights on the CPU in 1.23.0 (PR 25582, a dequantizing fallback). Older runtimes fail
# at session creation with a kernel error that does not say which version is needed.
MATMULNBITS_SINCE: dict[int | None, str] = {None: "1.17.0", 4: "1.17.0", 8: "1.22.0", 2: "1.23.0"}


class OrtOptions(TargetOptions):
    # "extended" is the highest level ONNX Runtime recommends saving offline: "all" adds
    # layout transforms specific to the CPU that ran the optimization. Sessions still apply
    # "all" at load time on the device itself.
    optimization: Literal["basic", "extended", "all"] = "extended"
    # Runtime tuning, recorded in the manifest and used by every session that loads it.
    spinning: bool | None = None  # intra-op threads spin while waiting (ORT default: on); off frees the cores between calls
    # Transformer fusions of onnxruntime.transformers.optimizer (edgekit.deploy.targets.ort_fusion):
    # auto applies those that match (and, on an INT8 graph, keep every quantized matmul on an
    # integer kernel); off saves ONNX Runtime's generic session optimizations only. Off by
    # default: on MiniLM-L6 (2-core Xeon, onnxruntime 1.32) the fused graph measured no faster
    # than the generic one, up to 12% slower at 128 tokens (bench/results/fusion/fusion.md).
    # qattention: on a lowered graph whose attention core is float (attention_bits=32), each layer's
    # quantized Q/K/V projections and attention as one com.microsoft QAttention, and no other fusion.
    fusion: Literal["auto", "off", "qattention"] = "off"


_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


# ONNX Runtime's SkipLayerNormFusion (Add + LayerNormalization -> com.microsoft SkipLayerNormalization) fires on
# the lowered QDQ graphs of early-exit segments and made them slower: a two-layer ternary-w2a8 MiniLM segment ran
# 4.15 ms with it and 3.41 ms without (70 tokens, one thread, onnxruntime 1.32, 2-core Xeon; the fused op alone
# took 0.49 ms a layer against 0.19 ms for the Add and LayerNormalization it replaced). The float exports never
# matched the pattern. Off when the optimized graph is saved and when it is loaded (the level "all" would fuse again).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def new_session(ort: Any, model: str | Path | bytes, so: Any) -> Any:
    """An InferenceSession on the CPU provider with :data:`DISABLED_OPTIMIZERS` off."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS))


def session_options(ort: Any, level: str, threads: int | None, spinning: bool | None = None) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if threads:
        so.intra_op_num_threads = threads
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def matmulnbits_need(model: str | Path | bytes) -> tuple[str, str] | None:
    """(the lowest onnxruntime that runs the graph's MatMulNBits nodes, which nodes need it), or None
    if the graph has none (or onnx, needed to read the graph, is not installed)."""
    if not isinstance(model, bytes):
        with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if view.find(b"MatMulNBits") < 0:  # the common case, without parsing the graph
                return None
        model = Path(model).read_bytes()
    if b"MatMulNBits" not in model or not is_installed("onnx"):
        return None
    raw = model
    onnx = require("onnx", for_="reading MatMulNBits nodes")
    graph = onnx.load_from_string(raw).graph
    need: tuple[str, str] | None = None
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        since = MATMULNBITS_SINCE.get(bits, MATMULNBITS_SINCE[None])
        if need is None or _version(since) > _version(need[0]):
            need = (since, f"MatMulNBits bits={bits} ({node.name or 'unnamed'})")
    return need


def check_matmulnbits(model: str | Path | bytes, installed: str) -> None:
    """Refuse, in one line naming the version needed, a graph whose MatMulNBits nodes ``installed`` onnxruntime cannot run."""
    need = matmulnbits_need(model)
    if need is not None and _version(installed) < _version(need[0]):
        raise TargetError(
            f"ort-cpu: the graph's com.microsoft {need[1]} needs onnxruntime >= {need[0]}; this is onnxruntime {installed}",
            hint=f"pip install 'onnxruntime>={need[0]}', or rebuild the graph with the INT8 QDQ lowering (no MatMulNBits)",
        )


class OrtSession:
    def __init__(self, path: Path, threads: int | None, *, packed: dict[str, Any] | None = None, spinning: bool | None = None) -> None:
        """``packed``: the manifest's ``settings.packed`` (weights to unpack and hash-check first)."""
        ort = require("onnxruntime", for_="target ort-cpu")
        model = packing.model_bytes(path.parent, path.name, packed) if packed else str(path)
        check_matmulnbits(model, runtime_version(ort))
        self._sess = new_session(ort, model, session_options(ort, "all", threads, spinning))
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self._binding: Any = None

    def __enter__(self) -> OrtSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sess = self._binding = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._sess.run(self.output_names, feed)))

    def infer_linked(self, feed: dict[str, Any], carry: str | None = None, fetch: bool = True) -> tuple[dict[str, np.ndarray], Any]:
        """One call through ONNX Runtime's I/O binding, for sessions run one after another.

        ``feed`` values are numpy arrays or values an earlier ``infer_linked`` returned (bound as they
        are, no copy). The output ``carry`` comes back as an ``OrtValue`` for the next session's feed;
        the other outputs as numpy when ``fetch`` (else an empty dict: nothing is copied out).
        """
        if self._binding is None:
            self._binding = self._sess.io_binding()
        io = self._binding
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                io.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                io.bind_ortvalue_input(name, value)
        for name in self.output_names:
            io.bind_output(name, "cpu")
        self._sess.run_with_iobinding(io)
        values = dict(zip(self.output_names, io.get_outputs()))
        carried = values.pop(carry) if carry else None
        return ({name: v.numpy() for name, v in values.items()} if fetch else {}), carried

    @staticmethod
    def take_rows(value: Any, rows: np.ndarray) -> np.ndarray:
        """Rows of a value ``infer_linked`` carried (a numpy copy: only when some rows left the batch)."""
        return value.numpy()[rows]


class OrtCpuTarget:
    name: ClassVar[str] = "ort-cpu"
    runtime: ClassVar[str] = "onnxruntime"
    description: ClassVar[str] = "ONNX Runtime, CPU execution provider, graph optimizations saved"
    options_model: ClassVar[type[TargetOptions]] = OrtOptions
    static_shapes: ClassVar[bool] = False
    model_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        return {"threads": profile.threads} if profile.threads else {}

    def check_available(self) -> None:
        require("onnxruntime", for_=f"target {self.name}")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OrtOptions, out: Path) -> dict[str, Any]:
        ort = require("onnxruntime", for_=f"target {self.name}")
        so = session_options(ort, options.optimization, options.threads, options.spinning)
        so.optimized_model_filepath = str(out / MODEL_FILE)
        check_matmulnbits(onnx_dir / manifest.model_file, runtime_version(ort))
        source, fusion = _fused_source(onnx_dir / manifest.model_file, manifest, options, out)
        new_session(ort, source, so)
        # the runtime leaves each lowered matmul's bias as its own Add: fold it into the op (see fold_matmul_bias)
        folded = ort_fusion.fold_matmul_bias(out / MODEL_FILE) if manifest.precision == "int8" and is_installed("onnx") else 0
        if is_installed("onnx"):  # subgraphs (If branches) saved with repeated names would not load again
            ort_fusion.unique_names(out / MODEL_FILE)
        settings: dict[str, Any] = {
            "fusion": fusion,
            "optimization_saved": options.optimization,
            "optimization_at_load": "all",
            "disabled_optimizers": list(DISABLED_OPTIMIZERS),
            "bias_folded": folded,
            "threads": options.threads,
            "spinning": options.spinning,
            "provider": "CPUExecutionProvider",
        }
        if manifest.precision == "int8":
            # the graph as fused: every quantized matmul of it must still reach an integer kernel
            settings["int8"] = check_int8(source, options.threads, strict="lowered" in manifest.settings)
        if source.parent == out:
            source.unlink()
        if manifest.settings.get("packed") and is_installed("onnx"):
            packed = packing.pack_onnx(out / MODEL_FILE, out)
            if packed is not None:
                settings["packed"] = packed
        return {
            "model_file": MODEL_FILE,
            "precision": manifest.precision,
            "runtime": {"onnxruntime": runtime_version(ort)},
            "settings": settings,
        }

    def tune_candidates(self, options: OrtOptions, manifest: Manifest) -> list[dict[str, Any]]:
        """Variants for compile's autotuner: the transformer fusions, one intra-op thread, both."""
        fusion_missing = ort_fusion.available()
        fused: dict[str, Any] = {"name": "fusion=auto", "options": {"fusion": "auto"}}
        if fusion_missing:
            fused["skip"] = fusion_missing
        cands = [fused]
        if manifest.precision == "int8":  # quantized Q/K/V + float attention -> QAttention
            qattention: dict[str, Any] = {**fused, "name": "fusion=qattention", "options": {"fusion": "qattention"}}
            core = ((manifest.settings.get("lowered") or {}).get("config") or {}).get("attention_bits", 32)
            if core < 32 and "skip" not in qattention:
                qattention["skip"] = (
                    f"the attention core is quantized ({core} bits): QAttention needs it float (quantize --attention-bits 32)"
                )
            cands.append(qattention)
        if (os.cpu_count() or 1) > 1:
            cands.append({"name": "threads=1", "options": {"threads": 1}})
            cands.append({**fused, "name": "fusion=auto threads=1", "options": {"fusion": "auto", "threads": 1}})
        return cands

    def runs_here(self) -> str | None:
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OrtSession:
        threads = options.threads if options else manifest.settings.get("threads")
        spinning = getattr(options, "spinning", None) if options else None
        spinning = spinning if spinning is not None else manifest.settings.get("spinning")
        return OrtSession(Path(artifact_dir) / manifest.model_file, threads, packed=manifest.settings.get("packed"), spinning=spinning)


def _fused_source(model_path: Path, manifest: Manifest, options: OrtOptions, out: Path) -> tuple[Path, dict[str, Any]]:
    """(the graph to optimize and save, the fusion report): the source itself when fusion is off or fuses nothing."""
    if options.fusion == "off":
        return model_path, {"mode": "off", "applied": {}}
    why = ort_fusion.available()
    if why is not None:
        return model_path, {"mode": options.fusion, "applied": {}, "why": why}
    fused = out / "_fused.onnx"
    int8 = manifest.precision == "int8"
    report = ort_fusion.fuse(model_path, fused, int8=int8, threads=options.threads or 1, qattention=options.fusion == "qattention")
    return (fused if report["applied"] else model_path), {"mode": options.fusion, **report}


def check_int8(model_path: Path, threads: int | None, *, strict: bool = True) -> dict[str, Any]:
    """ONNX Runtime's own answer on which quantized matmuls run in INT8; with ``strict`` (lowered
    binary/ternary graphs) raises if some fall back, else records them."""
    if not is_installed("onnx"):
        return {"checked": False, "why": "onnx is not installed (pip install 'edgekit[export]')"}
    report = int8check.ort_report(model_path, threads=threads)
    if not report["all_int8"] and not strict:
        report["note"] = int8check.fallback_message("onnxruntime", report)
    elif not report["all_int8"]:
        raise TargetError(
            f"ort-cpu: {int8check.fallback_message('onnxruntime', report)}",
            hint="this scheme cannot execute in INT8 on ONNX Runtime; quantize the activations of those matmuls (A8/A4/A1)",
        )
    return report

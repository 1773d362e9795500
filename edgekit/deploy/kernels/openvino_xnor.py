"""The 1-bit kernel in target ``openvino-cpu`` (option ``xnor``): rewrite at compile, ship the library, load it back.

Compile (:func:`plan`, :func:`read`, :func:`ship`): the lowered graph's binary x binary matmuls become
``BinaryMatMul`` nodes (:func:`edgekit.deploy.kernels.rewrite.rewrite`); the IR is read by a Core holding
the kernel; the library and its ``.sha256`` are copied into the artifact's ``kernels/`` folder, so the
artifact's file hashes cover them, and the manifest's ``settings.kernels.xnor`` records the library's
relative path, sha256, ISA, OpenVINO version and how many matmuls were rewritten and kept.

Load (:func:`load_into`): the library must match the sha256 the manifest records (a mismatch is refused,
never rebuilt); it is added to the session's Core before the IR is read. Where it cannot load (another
OpenVINO version, another CPU architecture), the kernel is built for this machine from the installed
source (:func:`edgekit.deploy.kernels.xnor.build`) and a one-line note says so.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit import env
from edgekit.deploy.artifact import sha256_file
from edgekit.deploy.kernels import rewrite, xnor
from edgekit.deps import require
from edgekit.errors import TargetError

KERNEL_DIR = "kernels"
REBUILD = "recompile the artifact (edgekit compile ... -o xnor=on)"
NOT_W1A1_HINT = "xnor=on is for lowered binary (W1A1) models (edgekit lower of a bit-w1a1 / bibert-w1a1 checkpoint); use xnor=off"


@dataclass(frozen=True)
class Plan:
    """A rewritten graph and the kernel library it runs with."""

    model: Any  # onnx.ModelProto with BinaryMatMul nodes
    report: dict[str, Any]
    library: Path
    isa: str


def not_w1a1(kept: int) -> str:
    return f"the model is not W1A1: none of its {kept} matmuls has binary weights and binary activations"


def plan(onnx_path: Path, mode: str, target: str = "openvino-cpu") -> tuple[Plan | None, str | None]:
    """(the rewrite to compile, None), or (None, why not) under ``auto``; under ``on`` a why-not is a TargetError."""
    onnx = require("onnx", for_=f"target {target} with xnor={mode}")
    new, report = rewrite.rewrite(onnx.load(str(onnx_path)))
    if not report["rewritten"]:
        why = not_w1a1(len(report["kept"]))
        if mode == "on":
            raise TargetError(f"{target}: xnor=on: {why}", hint=NOT_W1A1_HINT)
        return None, why
    avail = xnor.availability()
    if not avail.available:
        if mode == "on":
            raise TargetError(f"{target}: xnor=on: {avail.reason}", hint=xnor.HINT)
        return None, avail.reason
    return Plan(new, report, avail.library, avail.isa or "?"), None


def read(core: Any, p: Plan) -> Any:
    """The rewritten graph as an ``ov.Model``, with the kernel added to ``core`` (which compiles and checks it).

    Converted by ``ov.convert_model`` with the kernel as its extension, as the graph without the kernel is:
    ``Core.read_model`` skips convert_model's graph transformations, and its IR was measured slower
    (MiniLM W1A1: 1408 ops against 701)."""
    ov = require("openvino", for_="reading the rewritten graph")
    onnx = require("onnx", for_="reading the rewritten graph")
    lib = xnor.load(core, p.library)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rewritten.onnx"
        onnx.save(p.model, str(path))
        return ov.convert_model(str(path), extension=str(lib))


def ship(p: Plan, out: Path, ov_version: str) -> dict[str, Any]:
    """Copy the library (and its ``.sha256``) into ``out/kernels``; the manifest's ``settings.kernels.xnor``."""
    dst = out / KERNEL_DIR
    dst.mkdir(parents=True, exist_ok=True)
    lib = dst / xnor.LIBRARY
    shutil.copy2(p.library, lib)
    shutil.copy2(p.library.with_name(xnor.LIBRARY + ".sha256"), dst / (xnor.LIBRARY + ".sha256"))
    xnor.verify(lib)
    record = {
        "used": True,
        "op": p.report["op"],
        "library": f"{KERNEL_DIR}/{xnor.LIBRARY}",
        "sha256": sha256_file(lib),
        "isa": p.isa,
        "rewritten": len(p.report["rewritten"]),
        "kept": len(p.report["kept"]),
        "fused": len(p.report.get("fused", [])),  # pairs handing packed bits to each other (rewrite.fuse_bits)
        "attention": len(p.report.get("attention", [])),  # self-attentions run as one BinaryAttention (rewrite.fuse_attention)
        "openvino": ov_version,
    }
    if env.xnor_isa():
        record["isa_env"] = f"EDGEKIT_XNOR_ISA={env.xnor_isa()}"  # the session's environment decides the ISA at run time
    return record


def load_into(core: Any, artifact_dir: Path, record: dict[str, Any], ov_version: str) -> tuple[Path, str | None]:
    """Add the artifact's kernel to ``core``: (the library used, a one-line note if it was rebuilt here)."""
    name = str(record.get("library", ""))
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or ".." in parts:
        raise TargetError(f"{artifact_dir}: the manifest names the 1-bit kernel library {name!r}, not a file of the artifact", hint=REBUILD)
    lib = Path(artifact_dir) / name
    if not lib.is_file():
        raise TargetError(f"{artifact_dir}: the 1-bit kernel library {name} is missing", hint=REBUILD)
    if sha256_file(lib) != record.get("sha256"):
        raise TargetError(
            f"{artifact_dir}: the 1-bit kernel library {name} does not match the sha256 the manifest records (changed after compile)",
            hint=REBUILD,
        )
    built_for = record.get("openvino")
    if built_for != ov_version:
        why = f"it was built for OpenVINO {built_for}, this is {ov_version}"
    else:
        try:
            return xnor.load(core, lib), None
        except TargetError as err:
            why = err.message
    try:
        local = xnor.load(core, xnor.build())
    except TargetError as err:
        raise TargetError(
            f"{artifact_dir}: the artifact's 1-bit kernel does not load here ({why}) and building it here failed: {err.message}",
            hint=f"{xnor.HINT}; or recompile with -o xnor=off",
        ) from err
    return local, f"the artifact's 1-bit kernel does not load here ({why}); using one built for this machine: {local}"


def count_binary(model: Any, compiled: Any) -> int:
    """How many integer matmuls of the lowered graph the kernel's custom nodes of ``model`` execute (as
    ``Reference`` nodes in ``compiled``): one per ``BinaryMatMul``, three for one computing a layer's Q, K and
    V together, two per ``BinaryAttention`` (its query-key and probability-value products)."""
    weight = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == xnor.OP_TYPE:
            weight.setdefault(op.get_friendly_name(), 1)
        elif op.get_type_name() == xnor.ATTENTION_OP:
            weight[op.get_friendly_name()] = 2
            if op.get_attributes().get("qkv"):
                weight[op.input_value(0).get_node().get_friendly_name()] = 3
    found = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        original = set(rt["originalLayersNames"].astype(str).split(",")) if "originalLayersNames" in rt else set()
        if kind in ("Reference", xnor.OP_TYPE, xnor.ATTENTION_OP):
            found += sum(weight.get(name, 0) for name in original | {op.get_friendly_name()})
    return found

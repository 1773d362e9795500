"""Step ``compile``: an ONNX artifact (or a checkpoint, exported first) -> a target artifact.

The target writes its files into a staging directory; the step copies the tokenizer and
PyTorch's parity reference beside them, loads the result with the target's own runtime,
checks it against PyTorch's outputs, and only then writes the manifest and renames the
directory into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgekit.deploy import artifact, packing, parity, targets
from edgekit.deploy.artifact import MANIFEST, Manifest
from edgekit.errors import ConfigError, EdgekitError, TargetError

ONNX_DIR = "onnx"


def is_artifact(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / MANIFEST).exists()


def target_options(target: targets.Target, options: dict[str, Any] | None) -> targets.TargetOptions:
    try:
        return target.options_model.model_validate(options or {})
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"])
        raise ConfigError(
            f"target {target.name}: option {field}: {e['msg']}", hint=f"valid options: {', '.join(target.options_model.model_fields)}"
        ) from err


def ensure_onnx(model: str | Path | None, out_root: Path, *, task: str | None = None, export_options=None) -> tuple[Path, Manifest]:
    """The ONNX artifact to compile from: ``model`` itself, or ``out_root/onnx`` exported now."""
    if is_artifact(model):
        manifest = artifact.read_manifest(model)
        if manifest.kind != "onnx":
            raise ConfigError(
                f"{model}: is a compiled {manifest.target} artifact",
                hint="compile from the checkpoint or from an 'edgekit export' directory",
            )
        return Path(model), manifest
    from edgekit.build.export import ExportOptions, export

    onnx_dir = out_root / ONNX_DIR
    manifest = export(model, onnx_dir, export_options or ExportOptions(), task=task, name=out_root.resolve().name)
    return onnx_dir, manifest


def compile_artifact(
    onnx_dir: Path,
    onnx_manifest: Manifest,
    target_name: str,
    out: Path,
    *,
    options: dict[str, Any] | None = None,
    tolerance: parity.Tolerance | None = None,
) -> Manifest:
    """Compile an exported ONNX artifact for ``target_name`` into ``out``."""
    target = targets.get(target_name)
    opts = target_options(target, options)
    target.check_available()
    with artifact.staging(out) as tmp:
        try:
            # packed low-bit weights (edgekit lower) are unpacked and hash-checked for the target's tools
            with packing.unpacked_dir(onnx_dir, onnx_manifest) as source:
                fields = target.compile(source, onnx_manifest, opts, tmp)
        except Exception as err:
            if isinstance(err, EdgekitError) or not str(err):
                raise
            raise TargetError(
                f"{target.name}: compilation failed: {str(err).strip().splitlines()[0]}",
                hint="run with --debug for the runtime's traceback",
            ) from err
        artifact.copy_tokenizer(onnx_dir, tmp)
        shutil.copy2(onnx_dir / parity.REFERENCE, tmp / parity.REFERENCE)
        manifest = onnx_manifest.model_copy(
            update={
                **fields,
                "kind": "compiled",
                "target": target.name,
                "name": out.parent.name,
                "created": artifact.now(),
                "parent": artifact.manifest_sha256(onnx_dir),
                "parity": None,
                "files": {},
            }
        )
        tol = tolerance or _recorded_tolerance(manifest, onnx_manifest) or parity.TOLERANCES.get(manifest.precision, parity.Tolerance())
        not_here = target.executable_here(manifest)
        if not_here is not None:
            # Nothing to run here: ship what was produced, say plainly that parity is still to check.
            settings = {**manifest.settings, "tolerance": tol.model_dump(), "parity_not_run": not_here}
            return artifact.write_manifest(tmp, manifest.model_copy(update={"settings": settings}))
        feed, reference = parity.load_reference(tmp / parity.REFERENCE)
        output = manifest.outputs[0].name
        batch = manifest.static_shape[0] if manifest.static_shape else 8
        with target.load(tmp, manifest, opts) as session:
            actual = parity.run_chunked(lambda f: session.infer(f)[output], feed, batch)
        runtime = " ".join(f"{k} {v}" for k, v in fields["runtime"].items())
        report = parity.enforce(
            parity.compare(reference, actual, task=manifest.task, output=output, runtime=f"{target.name} ({runtime})", tolerance=tol)
        )
        manifest = manifest.model_copy(update={"parity": report, "settings": {**manifest.settings, "tolerance": tol.model_dump()}})
        return artifact.write_manifest(tmp, manifest)


def _recorded_tolerance(*manifests: Manifest) -> parity.Tolerance | None:
    """INT8 PTQ artifacts (edgekit.build.ptq, openvino-cpu int8=nncf) carry their own parity tolerance."""
    for m in manifests:
        if m.precision == "int8" and "ptq" in m.settings and "tolerance" in m.settings:
            return parity.Tolerance.model_validate(m.settings["tolerance"])
    return None


def compile(
    model: str | Path | None,
    target_name: str,
    out_root: str | Path,
    *,
    options: dict[str, Any] | None = None,
    task: str | None = None,
    export_options=None,
    tolerance: parity.Tolerance | None = None,
) -> tuple[Path, Manifest]:
    """Checkpoint or ONNX artifact -> ``out_root/<target>``. Returns (artifact dir, manifest)."""
    target = targets.get(target_name)  # unknown target: fail before a slow export
    target_options(target, options)
    target.check_available()
    out_root = Path(out_root)
    onnx_dir, onnx_manifest = ensure_onnx(model, out_root, task=task, export_options=export_options)
    out = out_root / target.name
    return out, compile_artifact(onnx_dir, onnx_manifest, target.name, out, options=options, tolerance=tolerance)

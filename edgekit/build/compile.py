"""Step ``compile``: an ONNX artifact -> a target artifact.

The target writes its files into a staging directory; the step copies the tokenizer and
PyTorch's parity reference beside them, loads the result with the target's own runtime,
checks it against PyTorch's outputs, and only then writes the manifest and renames the
directory into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekit.deploy import artifact, packing, parity, targets
from edgekit.deploy.artifact import Manifest
from edgekit.errors import EdgekitError, TargetError


def compiled_manifest(onnx_dir: Path, source: Manifest, fields: dict[str, Any], target: str, out: Path, tmp: Path) -> Manifest:
    """The manifest of a target artifact made from the ONNX artifact ``onnx_dir`` (parity still to
    run), with the tokenizer and PyTorch's parity reference copied into the staging dir ``tmp``."""
    artifact.copy_tokenizer(onnx_dir, tmp)
    shutil.copy2(onnx_dir / parity.REFERENCE, tmp / parity.REFERENCE)
    return source.model_copy(
        update={
            **fields,
            "kind": "compiled",
            "target": target,
            "name": out.parent.name,
            "created": artifact.now(),
            "parent": artifact.manifest_sha256(onnx_dir),
            "parity": None,
            "files": {},
        }
    )


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
    opts = targets.resolve_options(target_name, options)
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
        manifest = compiled_manifest(onnx_dir, onnx_manifest, fields, target.name, out, tmp)
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
    """INT8 PTQ artifacts (edgekit.build.ptq: ONNX Runtime static QDQ, NNCF) carry their own parity tolerance."""
    for m in manifests:
        if m.precision == "int8" and "ptq" in m.settings and "tolerance" in m.settings:
            return parity.Tolerance.model_validate(m.settings["tolerance"])
    return None

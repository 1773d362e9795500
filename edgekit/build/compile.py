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

from edgekit.build import tune
from edgekit.deploy import artifact, packing, parity, targets
from edgekit.deploy.artifact import Manifest
from edgekit.errors import EdgekitError, ParityError, TargetError


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
    tolerance: parity.Tolerance | dict[str, float] | None = None,
    progress: bool = True,
    candidates: list[dict[str, Any]] | None = None,
) -> Manifest:
    """Compile an exported ONNX artifact for ``target_name`` into ``out``.

    With ``tune`` (option ``tune=on``, or ``auto``, the default, on a lowered binary/ternary model)
    the target's candidate variants are built, checked and timed first (:mod:`edgekit.build.tune`)
    and the artifact is built with the fastest that passes parity; the manifest's
    ``settings.tune`` records every candidate and the options that rebuild the choice.
    ``candidates`` replaces the target's own (same form as ``Target.tune_candidates``). ``tolerance``: a whole
    parity tolerance, or fields laid over the one the artifact's precision (or its PTQ record) gives."""
    target = targets.get(target_name)
    opts = targets.resolve_options(target_name, options)
    target.check_available()
    with artifact.staging(out) as tmp:
        tuned = None
        # packed low-bit weights (edgekit lower) are unpacked and hash-checked for the target's tools
        with packing.unpacked_dir(onnx_dir, onnx_manifest) as source:
            if tune.wanted(opts, onnx_manifest) and candidates is None:
                candidates = targets.tune_candidates(target, opts, onnx_manifest)
            if tune.wanted(opts, onnx_manifest) and candidates and target.executable_here(onnx_manifest) is None:
                opts, tuned = _tune(target, candidates, source, onnx_dir, onnx_manifest, opts, tmp, tolerance, progress)
            fields = _target_compile(target, source, onnx_manifest, opts, tmp)
        manifest = compiled_manifest(onnx_dir, onnx_manifest, fields, target.name, out, tmp)
        if tuned is not None:
            manifest = manifest.model_copy(update={"settings": {**manifest.settings, "tune": tuned}})
        tol = _tolerance(tolerance, manifest, onnx_manifest)
        not_here = target.executable_here(manifest)
        if not_here is not None:
            # Nothing to run here: ship what was produced, say plainly that parity is still to check.
            settings = {**manifest.settings, "tolerance": tol.model_dump(), "parity_not_run": not_here}
            return artifact.write_manifest(tmp, manifest.model_copy(update={"settings": settings}))
        report = parity.enforce(compiled_parity(target, tmp, manifest, opts, tol, onnx_dir))
        manifest = manifest.model_copy(update={"parity": report, "settings": {**manifest.settings, "tolerance": tol.model_dump()}})
        return artifact.write_manifest(tmp, manifest)


def _target_compile(
    target: targets.Target, source: Path, onnx_manifest: Manifest, opts: targets.TargetOptions, out: Path
) -> dict[str, Any]:
    """The target's compile; a runtime's own exception becomes a one-line TargetError."""
    try:
        return target.compile(source, onnx_manifest, opts, out)
    except Exception as err:
        if isinstance(err, EdgekitError) or not str(err):
            raise
        raise TargetError(
            f"{target.name}: compilation failed: {str(err).strip().splitlines()[0]}",
            hint="run with --debug for the runtime's traceback",
        ) from err


def _tolerance(given: parity.Tolerance | dict[str, float] | None, manifest: Manifest, onnx_manifest: Manifest) -> parity.Tolerance:
    return _over(given, _recorded_tolerance(manifest, onnx_manifest) or parity.TOLERANCES.get(manifest.precision, parity.Tolerance()))


def _over(given: parity.Tolerance | dict[str, float] | None, base: parity.Tolerance) -> parity.Tolerance:
    """``given`` if it is a whole tolerance, else ``base`` with the given fields over it."""
    if isinstance(given, parity.Tolerance):
        return given
    return base.model_copy(update=given) if given else base


def compiled_parity(
    target: targets.Target, where: Path, manifest: Manifest, opts: targets.TargetOptions, tol: parity.Tolerance, onnx_dir: Path
):
    """The compiled model in ``where`` against PyTorch's parity reference (of ``onnx_dir``), not enforced."""
    feed, reference = parity.load_reference(onnx_dir / parity.REFERENCE)
    output = manifest.outputs[0].name
    batch = manifest.static_shape[0] if manifest.static_shape else 8
    with target.load(where, manifest, opts) as session:
        actual = parity.run_chunked(lambda f: session.infer(f)[output], feed, batch)
    runtime = " ".join(f"{k} {v}" for k, v in manifest.runtime.items())
    return parity.compare(reference, actual, task=manifest.task, output=output, runtime=f"{target.name} ({runtime})", tolerance=tol)


def _tune(
    target,
    candidates: list[dict[str, Any]],
    source: Path,
    onnx_dir: Path,
    onnx_manifest: Manifest,
    opts,
    tmp: Path,
    tolerance,
    progress: bool,
):
    """(the options to build with, the tuning record): the target's candidates built, checked, timed."""
    # every candidate is held to the tolerance of the build the user asked for (not its own precision's)
    base_precision = "int8" if onnx_manifest.precision == "int8" else opts.build_precision
    tol = _over(tolerance, _recorded_tolerance(onnx_manifest) or parity.TOLERANCES.get(base_precision, parity.Tolerance()))

    def build(o, where: Path) -> Manifest:
        fields = _target_compile(target, source, onnx_manifest, o, where)
        return onnx_manifest.model_copy(update={**fields, "kind": "compiled", "target": target.name, "parity": None, "files": {}})

    def check(where: Path, m: Manifest, o) -> tuple[bool, str]:
        try:
            report = parity.enforce(compiled_parity(target, where, m, o, tol, onnx_dir))
        except ParityError as err:
            return False, err.message
        return report.passed, ""

    feeds, feeds_source = tune.timing_feeds(onnx_dir, onnx_manifest, opts)
    chosen, record = tune.tune(
        candidates,
        opts,
        feeds,
        tmp / "_tune",
        build=build,
        check=check,
        open_session=lambda where, m, o: target.load(where, m, o),
        budget_s=opts.tune_budget_s,
        feeds_source=feeds_source,
        progress=progress,
    )
    return targets.resolve_options(target.name, record["options"]), record


def _recorded_tolerance(*manifests: Manifest) -> parity.Tolerance | None:
    """INT8 PTQ artifacts (edgekit.build.ptq: ONNX Runtime static QDQ, NNCF) carry their own parity tolerance."""
    for m in manifests:
        if m.precision == "int8" and "ptq" in m.settings and "tolerance" in m.settings:
            return parity.Tolerance.model_validate(m.settings["tolerance"])
    return None

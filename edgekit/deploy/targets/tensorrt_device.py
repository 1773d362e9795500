"""On the Jetson: ``build_engine.py`` of a pending ``jetson`` artifact builds (or adopts) its engine,
checks parity and updates the manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgekit.deploy import artifact, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.targets import tensorrt_plan as plan
from edgekit.deploy.targets.base import runtime_version
from edgekit.deploy.targets.tensorrt import JetsonTarget
from edgekit.deploy.targets.tensorrt_engine import FOR, build_engine, gpu_compute_capability, l4t_release, major_of
from edgekit.deps import require
from edgekit.errors import ArtifactError, EdgekitError, TargetError


def finish(artifact_dir: Path, *, adopt: bool = False) -> Manifest:
    """Build (or, with ``adopt``, take trtexec's) engine of a pending artifact; check parity; update the manifest."""
    root = Path(artifact_dir)
    manifest = artifact.read_manifest(root)
    if manifest.target != JetsonTarget.name:
        raise ArtifactError(
            f"{root}: a {manifest.target} artifact, not a jetson one", hint="pass a directory written by 'edgekit compile -t jetson'"
        )
    trt = require("tensorrt", for_=FOR)
    settings = dict(manifest.settings)
    version = runtime_version(trt)
    if major_of(version) != settings["tensorrt_major"]:
        raise TargetError(
            f"{root}: planned for TensorRT {settings['tensorrt_major']}, this is TensorRT {version}",
            hint=f"recompile with the option tensorrt_major={major_of(version)}",
        )
    if adopt:
        if not (root / plan.ENGINE_FILE).exists():
            raise TargetError(f"{root}: no {plan.ENGINE_FILE} to adopt", hint=f"run {plan.BUILD_SH} first")
        built = {"tensorrt_version": version, "compute_capability": gpu_compute_capability(), "l4t": l4t_release(), "built_with": "trtexec"}
    else:
        built = build_engine(trt, root / settings["plan"]["onnx"], root, settings)
    for key in ("not_built_here", "parity_not_run", "parity_rows"):
        settings.pop(key, None)
    settings |= {
        "built": built,
        "pinned": {"tensorrt_version": built["tensorrt_version"], "compute_capability": built["compute_capability"]},
    }
    update = {"model_file": plan.ENGINE_FILE, "pending": None, "runtime": {"tensorrt": version}, "settings": settings}
    feed, reference = parity.load_reference(root / parity.REFERENCE)
    total = len(reference)
    feed, reference, batch = plan.fit_reference(feed, reference, settings["shapes"], manifest.tokenizer.pad_id)
    if not len(reference):
        settings["parity_not_run"] = "no reference text fits the engine's optimization profile"
        return artifact.write_manifest(root, manifest.model_copy(update=update))
    if len(reference) < total:
        settings["parity_rows"] = f"{len(reference)} of {total} reference texts (the others are longer than the engine's profile)"
    manifest = manifest.model_copy(update=update)
    tolerance = (
        parity.Tolerance(**settings["tolerance"])
        if "tolerance" in settings
        else parity.TOLERANCES.get(manifest.precision, parity.Tolerance())
    )
    output = manifest.outputs[0].name
    with JetsonTarget().load(root, manifest) as session:
        actual = parity.run_chunked(lambda f: session.infer(f)[output], feed, batch)
    report = parity.enforce(
        parity.compare(reference, actual, task=manifest.task, output=output, runtime=f"jetson (tensorrt {version})", tolerance=tolerance)
    )
    return artifact.write_manifest(root, manifest.model_copy(update={"parity": report}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=plan.BUILD_PY, description="Build the TensorRT engine of a pending jetson artifact, on the device.")
    ap.add_argument("artifact", type=Path, help="the artifact directory (written by 'edgekit compile -t jetson')")
    ap.add_argument("--adopt", action="store_true", help=f"record the {plan.ENGINE_FILE} that {plan.BUILD_SH} built with trtexec")
    args = ap.parse_args(argv)
    try:
        manifest = finish(args.artifact, adopt=args.adopt)
    except EdgekitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = (
        f"parity passed (max abs diff {manifest.parity.max_abs_diff:.3g})"
        if manifest.parity
        else manifest.settings.get("parity_not_run", "")
    )
    print(f"{args.artifact / plan.ENGINE_FILE}: TensorRT {manifest.runtime['tensorrt']}; {result}")
    return 0

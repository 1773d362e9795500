"""The one runner: executes any :class:`~edgekit.build.plan.Plan` through the step cache.

Steps run in order (quantize -> exits -> prune | segments | lower | export -> ptq -> compile per
target -> eval -> profile), each through :class:`~edgekit.build.cache.Runner`, then the results
are laid out as the plan asks (see :mod:`edgekit.build.plan`). Every layout is written into a
hidden staging directory and renamed into place only when complete: an interrupted run never
leaves something that looks finished.

Exit codes of the CLI: 0 built and every checked budget passed; 2 a user error (bad recipe,
missing file, failed parity...); 3 a budget failed (or, with ``--strict``, could not be
checked here).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgekit import env
from edgekit.build import manifest as bm
from edgekit.build.budgets import REPRODUCIBILITY, check_budgets
from edgekit.build.cache import Runner, Say, Step, hash_path, host_fingerprint, tool_versions
from edgekit.build.pipeline import Pipeline, Ref
from edgekit.build.plan import Plan, TargetPlan
from edgekit.build.recipe import DEFAULT_METRIC, resolve_path
from edgekit.deploy import artifact
from edgekit.errors import ConfigError, DataError

EXIT_BUDGET = 3
REPORTS = "reports"
HTML_REPORT = "report.html"
ONNX_DIR = "onnx"
# Files of an artifact that are not the model: not counted in its size budget.
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "parity_reference.npz",
    "exit_reference.npz",
    artifact.MANIFEST,
    artifact.MANIFEST_SHA256,
)


@dataclass
class Result:
    """What a run produced: where, the build manifest (layout ``build``), and each step."""

    path: Path
    steps: list[Step]
    manifest: bm.BuildManifest | None = None
    strict: bool = False

    @property
    def failed(self) -> list[bm.Budget]:
        return self.manifest.budgets.failed if self.manifest else []

    @property
    def unchecked(self) -> list[bm.Budget]:
        return self.manifest.budgets.unchecked if self.manifest else []

    @property
    def exit_code(self) -> int:
        return EXIT_BUDGET if self.failed or (self.strict and self.unchecked) else 0


def run(plan: Plan, *, use_cache: bool = True, strict: bool = False, say: Say = print) -> Result:
    """Execute ``plan``: every step through the cache, then its results laid out at ``plan.output``."""
    out = plan.output.resolve()
    if plan.layout == "build":
        _owner_check(out, plan)
    t_start = time.perf_counter()
    with _cache_dir(plan, out) as cache:
        runner = Runner(cache, use_cache=use_cache, say=say)
        pipe = Pipeline(plan, runner, _model_ref(plan), _data_refs(plan), say)
        source = pipe.model
        if plan.steps.quantize:
            pipe.quantize()
        if plan.layout == "checkpoint":
            return _place(out, pipe.model.path, runner, say, manifest=False)
        onnx = pipe.onnx()
        if plan.steps.ptq:
            onnx = pipe.ptq(onnx)
        if plan.layout == "onnx":
            return _place(out, onnx.out, runner, say)
        if plan.steps.ptq and plan.steps.ptq.method == "nncf":  # NNCF's result is the openvino-cpu artifact itself
            compiled = {t.name: onnx for t in plan.targets}
            onnx = Ref(onnx.out, onnx.key)  # not an ONNX export to lay out beside the targets
        else:
            compiled = {t.name: pipe.compile(onnx, t) for t in plan.targets}
        if plan.layout == "targets":
            return _place_targets(out, onnx, compiled, runner, say)
        manifest, reports = _evaluate_all(plan, pipe, source, compiled, t_start)
        with artifact.staging(out) as tmp:
            say(f"writing {out}")
            for name in compiled:
                shutil.copytree(compiled[name].out, tmp / name)
            if reports:
                (tmp / REPORTS).mkdir()
            for dest, step in reports.items():
                shutil.copy2(step.out, tmp / REPORTS / dest)
            if reports:  # one file to open: the reports' tables and plots (uploaded by the CI example)
                from edgekit.deploy import html
                from edgekit.deps import is_installed

                html.write([tmp / REPORTS], tmp / HTML_REPORT, title=f"edgekit build {plan.name}", plots=is_installed("matplotlib"))
            artifact.write_json(tmp / artifact.MANIFEST, manifest.model_dump(mode="json"))
        return Result(out, runner.steps, manifest, strict)


def build(
    recipe_path: str | Path,
    *,
    targets: list[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    say: Say = print,
    train_progress: bool = True,
) -> Result:
    """``edgekit build RECIPE``: the recipe read and checked, made a plan (``targets``: a subset), run."""
    from edgekit.build import plan, recipe_check
    from edgekit.build import recipe as schema

    r = schema.load(recipe_path)
    p = plan.from_recipe(r, recipe_path, targets=targets).model_copy(update={"train_progress": train_progress})
    for note in recipe_check.check_files(r, str(recipe_path)):
        say(f"note: {note}")
    return run(p, use_cache=use_cache, strict=strict, say=say)


# ----------------------------------------------------------------------------- inputs


@contextmanager
def _cache_dir(plan: Plan, out: Path) -> Iterator[Path]:
    """The plan's step cache, or a temporary one beside the output (removed afterwards)."""
    if plan.cache is not None:
        yield plan.cache.resolve()
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: cannot write the output directory ({err.strerror})", hint="choose a writable --out path") from err
    # named like the staging directories, with the pid: a killed run's leftovers are found and removed
    tmp = Path(tempfile.mkdtemp(prefix=f".partial-cache-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
    finally:
        if env.rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)


def _model_ref(plan: Plan) -> Ref:
    from edgekit.build import checkpoint

    path = resolve_path(plan.model)
    if (path / artifact.MANIFEST).exists():
        m = artifact.read_manifest(path)
        if m.kind != "onnx":
            raise ConfigError(
                f"{path}: is a compiled {m.target} artifact", hint="start from the checkpoint or from an 'edgekit export' directory"
            )
        if plan.steps.quantize or plan.steps.exits or plan.steps.lower:
            raise ConfigError(f"{path}: is an ONNX artifact, and this plan trains or lowers a model", hint="give the checkpoint instead")
        return Ref(path.resolve(), "onnx:" + hash_path(path))
    info = checkpoint.inspect(plan.model, task=plan.task)
    return Ref(info.path, "model:" + hash_path(info.path))


def _data_refs(plan: Plan) -> dict[str, Ref]:
    data: dict[str, Ref] = {}
    files = {"train": plan.data.train, "calibration": plan.data.calibration_file(), "dev": plan.data.dev}
    if plan.profile and plan.profile.texts:
        files["profile_texts"] = plan.profile.texts
    for role, value in files.items():
        if value is not None:
            p = resolve_path(value).resolve()
            if not p.is_file():
                raise DataError(f"{value}: no such data file ({role})", hint="fix the path (relative paths start at the working directory)")
            data[role] = Ref(p, "data:" + hash_path(p))
    return data


# ----------------------------------------------------------------------------- layouts


def _place(out: Path, source: Path, runner: Runner, say: Say, *, manifest: bool = True) -> Result:
    """One step's output (an artifact, or with ``manifest=False`` a checkpoint) copied to ``out``, atomically."""
    if env.rank() == 0:
        with artifact.staging(out, manifest=manifest) as tmp:
            say(f"writing {out}")
            shutil.rmtree(tmp)
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("train_state", "work"))
    return Result(out, runner.steps)


def _place_targets(out: Path, onnx: Step | Ref, compiled: dict[str, Step], runner: Runner, say: Say) -> Result:
    """``OUT/<target>/`` each replaced on its own, and ``OUT/onnx/`` when this run exported it."""
    if isinstance(onnx, Step):
        _place(out / ONNX_DIR, onnx.out, runner, say)
    for name, step in compiled.items():
        _place(out / name, step.out, runner, say)
    return Result(out, runner.steps)


# ----------------------------------------------------------------------------- build layout


def _evaluate_all(
    plan: Plan, pipe: Pipeline, source: Ref, compiled: dict[str, Step], t_start: float
) -> tuple[bm.BuildManifest, dict[str, Step]]:
    """Eval and profile every artifact that runs here; budgets; the build manifest and its reports."""
    from edgekit.build import checkpoint
    from edgekit.deploy import targets as registry

    info = checkpoint.inspect(plan.model, task=plan.task)
    metric = plan.budgets.metric or DEFAULT_METRIC[info.task]
    baseline, reports = None, {}
    if plan.evaluate and "dev" in pipe.data:
        base_onnx = pipe.export(source, "baseline: FP32 checkpoint")  # the pipeline's own export when nothing changed the model
        baseline = pipe.evaluate("fp32", base_onnx.key, base_onnx.out)
        reports["fp32.eval.json"] = baseline
    entries: dict[str, bm.ArtifactEntry] = {}
    for t in plan.targets:
        step = compiled[t.name]
        m = artifact.read_manifest(step.out)
        not_here = m.pending or registry.get(t.name).executable_here(m)
        accuracy = latency = None
        if not_here is None and baseline is not None:
            ev = pipe.evaluate(t.name, step.key, step.out)
            reports[f"{t.name}.eval.json"] = ev
            value, base = ev.summary["metrics"].get(metric), baseline.summary["metrics"].get(metric)
            if value is not None and base is not None:
                accuracy = bm.Accuracy(
                    metric=metric,
                    value=value,
                    baseline=base,
                    drop_points=round((base - value) * 100, 4),
                    data=pipe.data["dev"].path.name,
                    n=ev.summary["n"],
                    report=f"{REPORTS}/{t.name}.eval.json",
                )
        if not_here is None and plan.profile is not None:
            pr = pipe.profile(t.name, step.key, step.out, m)
            reports[f"{t.name}.profile.json"] = pr
            latency = bm.Latency(**pr.summary, batch=1, host=host_fingerprint()["cpu"], report=f"{REPORTS}/{t.name}.profile.json")
        entry = _entry(t, step, m, not_here, accuracy, latency)
        budgets = check_budgets(plan.budgets, t.name, entry.model_dump(mode="json"), not_here)
        entries[t.name] = entry.model_copy(update={"budgets": [bm.Budget(**b) for b in budgets]})
    steps = pipe.runner.steps
    manifest = bm.BuildManifest(
        created=artifact.now(),
        recipe=plan.origin or {"name": plan.name, "path": plan.source, "sha256": None, "file_sha256": None, "description": ""},
        checkpoint={
            "path": str(info.path),
            "sha256": info.sha256(),
            "dir_sha256": hash_path(info.path),
            "task": info.task,
            "model_type": info.model_type,
        },
        data={role: {"path": str(r.path), "sha256": r.id.removeprefix("data:")} for role, r in pipe.data.items()},
        tools=tool_versions(),
        host=host_fingerprint(),
        steps=[bm.StepEntry(step=s.name, key=s.key, cached=s.cached, seconds=s.record["seconds"], summary=s.summary) for s in steps],
        targets_in_recipe=list(plan.targets_in_recipe or [t.name for t in plan.targets]),
        targets_built=[t.name for t in plan.targets],
        skipped=plan.skipped,
        baseline=bm.Baseline(
            metric=metric,
            value=baseline.summary["metrics"].get(metric),
            data=pipe.data["dev"].path.name,
            artifact="FP32 checkpoint exported to ONNX, on onnxruntime",
        )
        if baseline
        else None,
        artifacts=entries,
        budgets=bm.summarize([b for e in entries.values() for b in e.budgets]),
        reproducibility=REPRODUCIBILITY,
        seconds=round(time.perf_counter() - t_start, 1),
        cached_steps=sum(s.cached for s in steps),
        total_steps=len(steps),
    )
    return manifest, reports


def _entry(t: TargetPlan, step: Step, m: artifact.Manifest, not_here: str | None, accuracy, latency) -> bm.ArtifactEntry:
    return bm.ArtifactEntry(
        path=t.name,
        target=t.name,
        device=t.device,
        kind=m.kind,
        precision=m.precision,
        inputs=[x.model_dump() for x in m.inputs],
        outputs=[x.model_dump() for x in m.outputs],
        static_shape=m.static_shape,
        exits={"layers": m.exits.layers, "policy": m.exits.policy, "param": m.exits.param} if m.exits else None,
        runtime=m.runtime,
        parity=m.parity.model_dump() if m.parity else None,
        parity_not_run=m.settings.get("parity_not_run"),
        pending=m.pending,
        runs_here=not_here is None,
        not_here=not_here,
        files={k: v.model_dump() for k, v in m.files.items()},
        size_bytes=sum(f.bytes for f in m.files.values()),
        model_bytes=sum(f.bytes for name, f in m.files.items() if Path(name).name not in AUX_FILES),
        manifest_sha256=artifact.manifest_sha256(step.out),
        step_key=step.key,
        accuracy=accuracy,
        latency=latency,
    )


def _owner_check(out: Path, plan: Plan) -> None:
    """Refuse to replace a directory that is not an earlier build of this same recipe (or command)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory", hint="set another `output` or `name` in the recipe")
    manifest = out / artifact.MANIFEST
    hint = "remove it, or set another `output` or `name` in the recipe"
    if not manifest.exists():
        if any(out.iterdir()):
            raise ConfigError(f"{out}: exists and is not an edgekit build (no manifest.json); refusing to replace it", hint=hint)
        return
    try:
        theirs = bm.load(manifest).recipe
    except Exception:  # noqa: BLE001 - any unreadable manifest: not ours to replace
        raise ConfigError(
            f"{out}: holds something other than an edgekit build ({manifest} is not a build manifest); refusing to replace it", hint=hint
        ) from None
    mine = plan.origin.get("path", plan.source)
    if theirs.get("name") != plan.name or theirs.get("path") != mine:
        raise ConfigError(
            f"{out}: holds the build of another recipe ({theirs.get('path')}, name {theirs.get('name')!r}); refusing to replace it",
            hint="remove it, or give this recipe another `name` or `output`",
        )

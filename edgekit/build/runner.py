"""``edgekit build RECIPE``: run a recipe's steps in order, cache each step, gate on budgets.

The runner strings the library's steps together (quantize -> exits -> prune | segments |
lower | export -> ptq -> compile per target -> eval -> profile). Each step is keyed by the
sha256 of its inputs (file contents, or the key of the step that made them), its settings,
edgekit's version and the versions of the tools it runs; a step whose key is in the cache
is not run again. A cache entry is ``CACHE/<step>-<key>/``, complete only once its
``step.json`` is written (last): an interrupted build leaves entries without it, which the
next build redoes (QAT resumes from its last saved training step).

The build itself, ``OUTPUT/NAME/`` (one directory per target, ``reports/``, ``manifest.json``),
is assembled from the cache in a hidden temp directory and renamed into place at the end:
an interrupted build never leaves a directory that looks complete.

Exit codes of the CLI: 0 built and every checked budget passed; 2 a user error (bad recipe,
missing file, failed parity...); 3 a budget failed (or, with ``--strict``, could not be
checked here).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.build.budgets import REPRODUCIBILITY, check_budgets
from edgekit.build.recipe import Recipe, Target, check_files, load, resolve_path
from edgekit.deploy import artifact
from edgekit.errors import ArtifactError, ConfigError, MissingDependency

BUILD_KIND = "edgekit-build"
MANIFEST_SCHEMA = 1
EXIT_BUDGET = 3
STEP_RECORD = "step.json"
REPORTS = "reports"
TOOLS = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "tokenizers")
# The tools whose versions a step's output depends on (its cache key holds them, and edgekit's).
_TORCH, _ONNX = ("torch", "transformers", "numpy"), ("torch", "transformers", "onnx", "onnxruntime", "numpy")
STEP_TOOLS = {
    "quantize": _TORCH,
    "exits": _TORCH,
    "export": _ONNX,
    "prune": _ONNX,
    "segments": _ONNX,
    "lower": _ONNX,
    "ptq": ("onnx", "onnxruntime", "numpy", "tokenizers"),
    "compile": ("onnx", "onnxruntime", "openvino", "nncf", "numpy", "tokenizers"),
    "eval": ("onnxruntime", "openvino", "numpy", "tokenizers"),
    "profile": ("onnxruntime", "openvino", "numpy", "tokenizers"),
}
# Files of an artifact that are not the model: not counted in its size budget.
AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "parity_reference.npz",
    "exit_reference.npz",
    artifact.MANIFEST,
)
Say = Callable[[str], None]


# ----------------------------------------------------------------------------- hashing


_HASHES: dict[tuple, str] = {}


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names + contents; caches and hidden files skipped)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_mtime_ns, st.st_size)
    if path.is_file():
        if memo not in _HASHES:
            _HASHES[memo] = artifact.sha256_file(path)
        return _HASHES[memo]
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if not f.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or f.suffix == ".pyc":
            continue
        h.update(str(rel).encode() + b"\0" + hash_path(f).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    from edgekit.deps import version_of

    found = {name: version_of(name) for name in TOOLS}
    return {"edgekit": __version__, "python": platform.python_version(), **{k: v for k, v in found.items() if v}}


def host_fingerprint() -> dict[str, Any]:
    """What a latency figure depends on (the profile step's key includes it)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu, "logical_cores": os.cpu_count()}


def step_key(step: str, payload: dict[str, Any]) -> str:
    versions = tool_versions()
    tools = {k: versions.get(k) for k in ("edgekit", "python", *STEP_TOOLS.get(step, TOOLS))}
    doc = {"step": step, "tools": tools, **payload}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- cache


@dataclass
class Step:
    """One finished step: where its output is, and whether it came from the cache."""

    name: str
    key: str
    dir: Path
    record: dict[str, Any]
    cached: bool

    @property
    def out(self) -> Path:
        return self.dir / self.record["output"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.get("summary", {})


class Runner:
    """Runs steps through the cache and reports progress."""

    def __init__(self, cache: Path, *, use_cache: bool, say: Say) -> None:
        self.cache = cache
        self.use_cache = use_cache
        self.say = say
        self.steps: list[Step] = []
        self._this_run: dict[str, Step] = {}  # a step asked for twice in one build runs once, even with --no-cache

    def run(self, name: str, label: str, payload: dict[str, Any], fn: Callable[[Path], tuple[str, dict]]) -> Step:
        """``fn(entry_dir) -> (output path relative to the entry, summary)``; skipped on a cache hit."""
        key = step_key(name.split(":")[0], payload)
        if key in self._this_run:
            return self._this_run[key]
        entry = self.cache / f"{name.replace(':', '-')}-{key[:20]}"
        record_file = entry / STEP_RECORD
        if self.use_cache and record_file.exists():
            try:
                record = json.loads(record_file.read_text())
                out = entry / record["output"]
                if (out / artifact.MANIFEST).exists():
                    artifact.read_manifest(out)  # every file still matches its sha256
                elif not out.exists():
                    raise ArtifactError(f"{out} is missing")
                step = Step(name, key, entry, record, cached=True)
                self.say(f"{label}: cached ({entry})")
                return self._keep(step)
            except (OSError, ValueError, KeyError, ArtifactError) as err:
                self.say(f"{label}: cache entry unusable ({err}); running it again")
        record_file.unlink(missing_ok=True)
        entry.mkdir(parents=True, exist_ok=True)
        self.say(f"{label} ...")
        t0 = time.perf_counter()
        output, summary = fn(entry)
        seconds = time.perf_counter() - t0
        record = {
            "step": name,
            "key": key,
            "output": output,
            "seconds": round(seconds, 2),
            "created": artifact.now(),
            "inputs": payload,
            "summary": summary,
        }
        tmp = entry / f".{STEP_RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, record_file)  # the entry is complete from here on
        self.say(f"{label}: done in {seconds:.1f}s")
        return self._keep(Step(name, key, entry, record, cached=False))

    def _keep(self, step: Step) -> Step:
        self.steps.append(step)
        self._this_run[step.key] = step
        return step


def subset(path: Path, limit: int | None, dest_dir: Path, *, skip: int = 0) -> Path:
    """Records ``skip .. skip+limit`` of a data file (the file itself when no limit)."""
    if limit is None:
        return path
    dest = dest_dir / f"rows{skip}-{skip + limit}-{path.name}"
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= skip + limit:
                break
            if i >= skip:
                writer.writerow(row)
        dest.write_text(buf.getvalue(), encoding="utf-8")
    else:
        lines = [line for line in text.splitlines() if line.strip()][skip : skip + limit]
        dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def _rows(path: Path) -> int:
    from edgekit.deploy import data

    return len(data.read_texts(path))


def _lazy(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise MissingDependency(
            f"{module} is not part of this edgekit, but the recipe's step {what} needs it",
            hint=f"update edgekit, or remove steps.{what} from the recipe",
        ) from err


# ----------------------------------------------------------------------------- the steps


@dataclass
class Ref:
    """A step's input: a path and the id its consumers' keys use (content hash or step key)."""

    path: Path
    id: str


@dataclass
class Pipeline:
    recipe: Recipe
    runner: Runner
    model: Ref  # the checkpoint the next step takes (the recipe's, then the quantized one)
    data: dict[str, Ref]
    say: Say
    train_progress: bool

    def quantize(self) -> None:
        q = self.recipe.steps.quantize
        model, train = self.model, self.data["train"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.quant import distill, make_config
            from edgekit.build.quant.train import TrainOptions, run

            work = entry / "work"
            resume = (work / "train_state" / "state.pt").exists()
            if resume:
                self.say(f"quantize: resuming the interrupted training in {work}")
            dcfg = distill.DEFAULTS[make_config(q.scheme).method].model_copy(update={"ce": q.ce}) if q.ce else None
            opts = TrainOptions(
                model=str(model.path),
                data=str(train.path),
                out=str(work),
                scheme=q.scheme,
                steps=q.steps,
                epochs=q.epochs,
                limit=q.limit,
                batch_size=q.batch_size,
                max_length=q.max_length,
                lr=q.lr,
                multi_step=q.multi_step,
                intermediate=q.intermediate,
                seed=q.seed,
                device=q.device,
                save_every=q.save_every,
                resume=resume,
                keep_state=False,
                progress=self.train_progress,
                distill=dcfg,
            )
            report = run(opts)
            shutil.rmtree(entry / "checkpoint", ignore_errors=True)
            os.replace(work, entry / "checkpoint")
            stages = [
                {k: s.get(k) for k in ("scheme", "steps", "epochs", "seconds", "loss_first", "loss_last", "start_step")}
                for s in report["stages"]
            ]
            return "checkpoint", {"scheme": q.scheme, "texts": report["texts"], "device": report["device"], "stages": stages}

        budget = f"{q.steps} steps" if q.steps else f"{q.epochs:g} epochs"
        step = self.runner.run(
            "quantize", f"quantize: {q.scheme} QAT, {budget}", {"model": model.id, "train": train.id, "settings": q.model_dump()}, fn
        )
        self.model = Ref(step.out, step.key)

    def exits(self) -> Step:
        e = self.recipe.steps.exits
        model, train, calib = self.model, self.data["train"], self.data["calibration"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.exits import steps as xb
            from edgekit.build.exits.train import TrainConfig
            from edgekit.deploy import data

            heads = entry / "heads"
            tr = subset(train.path, e.limit, entry)
            if calib.path != train.path:
                cal = subset(calib.path, e.limit, entry)
            elif e.limit and _rows(train.path) >= 2 * e.limit:
                cal = subset(train.path, e.limit, entry, skip=e.limit)  # held out from the heads' training texts
            else:
                cal = tr
                self.say("exits: calibrating on the heads' own training texts (give data.calibration, or a limit under half of data.train)")
            xb.train(
                model.path,
                tr,
                heads,
                layers=e.layers,
                resume=True,
                config=TrainConfig(epochs=e.epochs, lr=e.lr, seed=e.seed, device=e.device),
            )
            r = xb.calibrate(heads, cal, heads / "calibration", max_drop=e.max_drop, unsupervised=data.kind(cal) != "labeled")
            return "heads", {
                "layers": r["layers"],
                "base_quality": r["base"],
                "per_exit_quality": r["per_exit_quality"],
                "chosen": r["chosen"],
            }

        return self.runner.run(
            "exits",
            "exits: train heads, calibrate",
            {"model": model.id, "train": train.id, "calibration": calib.id, "settings": e.model_dump()},
            fn,
        )

    def onnx(self) -> Step:
        """The one ONNX artifact every target compiles from."""
        s, name = self.recipe.steps, self.recipe.name
        if s.exits:
            heads = self.exits()
            if s.prune:
                layer = s.prune.layer or _depth_for(heads.summary, s.exits.max_drop)

                def prune(entry: Path) -> tuple[str, dict]:
                    from edgekit.build.exits import steps as xb

                    xb.prune(heads.out, layer, entry / "onnx", name=name)
                    return "onnx", {"layer": layer}

                return self.runner.run(
                    "prune", f"prune: depth cut at layer {layer}", {"heads": heads.key, "layer": layer, "name": name}, prune
                )
            chosen = heads.summary["chosen"]
            policy = s.exits.policy or f"{chosen['policy']}={chosen['param']:g}"

            def segments(entry: Path) -> tuple[str, dict]:
                from edgekit.build.exits import steps as xb

                xb.export(heads.out, policy, entry / "onnx", name=name)
                return "onnx", {"policy": policy}

            return self.runner.run(
                "segments", f"export: early-exit segments, policy {policy}", {"heads": heads.key, "policy": policy, "name": name}, segments
            )
        if s.lower:
            model = self.model

            def lower(entry: Path) -> tuple[str, dict]:
                mod = _lazy("edgekit.build.lower", "lower")
                m = mod.lower(model.path, entry / "onnx", pack=s.lower.pack, progress=self.say)
                return "onnx", {"precision": m.precision}

            return self.runner.run(
                "lower", "lower: quantized checkpoint -> INT8 QDQ ONNX", {"model": model.id, "settings": s.lower.model_dump()}, lower
            )
        return self.export(self.model, "export")

    def export(self, model: Ref, label: str) -> Step:
        x, task, name = self.recipe.steps.export, self.recipe.task, self.recipe.name

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build.export import ExportOptions, export

            tol = x.tolerance()
            opts = ExportOptions(opset=x.opset, static_shape=x.static_shape, max_length=x.max_length, **({"tolerance": tol} if tol else {}))
            m = export(model.path, entry / "onnx", opts, task=task, name=name)
            return "onnx", {"parity_max_abs_diff": m.parity.max_abs_diff if m.parity else None}

        return self.runner.run(
            "export", f"{label}: checkpoint -> ONNX", {"model": model.id, "task": task, "name": name, "settings": x.model_dump()}, fn
        )

    def ptq(self, onnx: Step) -> Step:
        p, calib = self.recipe.steps.ptq, self.data["calibration"]

        def fn(entry: Path) -> tuple[str, dict]:
            mod = _lazy("edgekit.build.ptq", "ptq")
            m = mod.quantize_onnx(onnx.out, entry / "onnx", calibration=calib.path, samples=p.samples, progress=self.say)
            return "onnx", {"precision": m.precision}

        return self.runner.run(
            "ptq",
            f"ptq: INT8 static quantization ({p.samples} calibration texts)",
            {"onnx": onnx.key, "calibration": calib.id, "settings": p.model_dump()},
            fn,
        )

    def compile(self, onnx: Step, t: Target) -> Step:
        name = self.recipe.name
        options = t.plan_options()
        device_id = None
        if t.device:
            from edgekit.deploy import devices

            device_id = hash_path(devices.devices_dir() / f"{t.device}.yaml")

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.build import compile as compile_step
            from edgekit.build.exits.segments import compile_exits

            out = entry / name / t.name  # the artifact's manifest takes its name from the parent folder
            src = artifact.read_manifest(onnx.out)
            if src.exits is not None:
                m = compile_exits(onnx.out, t.name, out, options=options)
            else:
                m = compile_step.compile_artifact(
                    onnx.out, src, t.name, out, options=options, tolerance=self.recipe.steps.export.tolerance()
                )
            return f"{name}/{t.name}", {"precision": m.precision, "pending": m.pending}

        file_options = {k: hash_path(Path(v)) for k, v in options.items() if isinstance(v, str) and Path(v).is_file()}
        return self.runner.run(
            f"compile:{t.name}",
            f"compile: {t.name}",
            {
                "onnx": onnx.key,
                "target": t.name,
                "options": options,
                "option_files": file_options,
                "device": t.device,
                "device_profile": device_id,
                "name": name,
                "tolerance": self.recipe.steps.export.model_dump(include={"atol", "min_cosine", "min_argmax_agreement"}),
            },
            fn,
        )

    def evaluate(self, what: str, artifact_key: str, artifact_dir: Path) -> Step:
        dev = self.data["dev"]

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.deploy.eval import evaluate

            report = evaluate(artifact_dir, dev.path, batch=16, fidelity=False)
            artifact.write_json(entry / "eval.json", report.model_dump())
            return "eval.json", {"metrics": report.metrics, "n": report.n}

        return self.runner.run(f"eval:{what}", f"eval: {what} on {dev.path.name}", {"artifact": artifact_key, "dev": dev.id}, fn)

    def profile(self, what: str, artifact_key: str, artifact_dir: Path, m: artifact.Manifest) -> Step:
        p = self.recipe.profile
        texts = self.data.get("profile_texts")
        static = m.static_shape is not None
        seq_len = min(p.seq_len, m.tokenizer.max_length)  # a model with a shorter limit is measured at its limit

        def fn(entry: Path) -> tuple[str, dict]:
            from edgekit.deploy.profile import ProfileOptions, profile

            opts = ProfileOptions(
                seq_len=seq_len,
                seconds_per_point=p.seconds,
                min_runs=p.min_runs,
                warmup=p.warmup,
                cold_runs=p.cold_runs,
                threads=p.threads,
                batches=None if static else [1],
                text_file=texts.path if texts else None,
            )
            report = profile(artifact_dir, opts)
            artifact.write_json(entry / "profile.json", report.model_dump())
            ft = report.first_token
            return "profile.json", {
                "p50_ms": ft.model_only.p50,
                "p90_ms": ft.model_only.p90,
                "seq_len": ft.seq_len,
                "e2e_p50_ms": ft.end_to_end.p50 if ft.end_to_end else None,
            }

        return self.runner.run(
            f"profile:{what}",
            f"profile: {what}",
            {
                "artifact": artifact_key,
                "settings": p.model_dump(),
                "seq_len": seq_len,
                "texts": texts.id if texts else None,
                "host": host_fingerprint(),
            },
            fn,
        )


def _depth_for(exits_summary: dict, max_drop: float) -> int:
    from edgekit.build.exits.steps import depth_for

    return depth_for({"per_exit_quality": exits_summary["per_exit_quality"], "layers": exits_summary["layers"]}, max_drop)


# ----------------------------------------------------------------------------- output


def _owner_check(out: Path, recipe: Recipe, recipe_path: Path) -> None:
    """Refuse to replace a directory that is not an earlier build of this same recipe."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory", hint="set another `output` or `name` in the recipe")
    manifest = out / artifact.MANIFEST
    if not manifest.exists():
        if any(out.iterdir()):
            raise ConfigError(
                f"{out}: exists and is not an edgekit build (no manifest.json); refusing to replace it",
                hint="remove it, or set another `output` or `name` in the recipe",
            )
        return
    try:
        doc = json.loads(manifest.read_text())
        theirs = doc["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{out}: holds something other than an edgekit build ({manifest} is not a build manifest); refusing to replace it",
            hint="remove it, or set another `output` or `name` in the recipe",
        ) from None
    if doc.get("kind") != BUILD_KIND or theirs.get("name") != recipe.name or theirs.get("path") != str(recipe_path):
        raise ConfigError(
            f"{out}: holds the build of another recipe ({theirs.get('path')}, name {theirs.get('name')!r}); refusing to replace it",
            hint="remove it, or give this recipe another `name` or `output`",
        )


def _model_bytes(m: artifact.Manifest) -> int:
    return sum(f.bytes for name, f in m.files.items() if Path(name).name not in AUX_FILES)


@dataclass
class BuildResult:
    path: Path
    manifest: dict[str, Any]
    strict: bool = False

    @property
    def failed(self) -> list[dict]:
        return self.manifest["budgets"]["failed"]

    @property
    def unchecked(self) -> list[dict]:
        return self.manifest["budgets"]["unchecked"]

    @property
    def exit_code(self) -> int:
        return EXIT_BUDGET if self.failed or (self.strict and self.unchecked) else 0


def build(
    recipe_path: str | Path,
    *,
    targets: list[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    say: Say = print,
    train_progress: bool = True,
) -> BuildResult:
    """Build ``recipe_path``: every step (cached), every target (or ``targets``), budgets, manifest."""
    from edgekit.build import checkpoint
    from edgekit.deploy import targets as registry

    recipe_path = Path(recipe_path)
    recipe = load(recipe_path)
    for note in check_files(recipe, str(recipe_path)):
        say(f"note: {note}")
    chosen = _select(recipe, targets, recipe_path)
    out = (Path(recipe.output) / recipe.name).resolve()
    _owner_check(out, recipe, recipe_path.resolve())
    t_start = time.perf_counter()

    info = checkpoint.inspect(recipe.model, task=recipe.task)
    model = Ref(info.path, "model:" + hash_path(info.path))
    data: dict[str, Ref] = {}
    for role in ("train", "calibration", "dev"):
        value = getattr(recipe.data, role) if role != "calibration" else recipe.data.calibration_file()
        if value is not None:
            p = resolve_path(value).resolve()
            data[role] = Ref(p, "data:" + hash_path(p))
    if recipe.profile.texts:
        p = resolve_path(recipe.profile.texts).resolve()
        data["profile_texts"] = Ref(p, "data:" + hash_path(p))
    runner = Runner(Path(recipe.cache).resolve(), use_cache=use_cache, say=say)
    pipe = Pipeline(recipe, runner, model, data, say, train_progress)

    if recipe.steps.quantize:
        pipe.quantize()
    onnx = pipe.onnx()
    if recipe.steps.ptq:
        onnx = pipe.ptq(onnx)
    compiled = {t.name: pipe.compile(onnx, t) for t in chosen}

    baseline = None
    metric = recipe.metric_for(info.task)
    if "dev" in data:
        base_onnx = pipe.export(model, "baseline: FP32 checkpoint")  # the pipeline's own export when nothing changed the model
        baseline = pipe.evaluate("fp32", base_onnx.key, base_onnx.out)

    entries: dict[str, dict[str, Any]] = {}
    for t in chosen:
        step = compiled[t.name]
        m = artifact.read_manifest(step.out)
        target = registry.get(t.name)
        not_here = m.pending or target.executable_here(m)
        entry: dict[str, Any] = {
            "path": t.name,
            "target": t.name,
            "device": t.device,
            "kind": m.kind,
            "precision": m.precision,
            "inputs": [x.model_dump() for x in m.inputs],
            "outputs": [x.model_dump() for x in m.outputs],
            "static_shape": m.static_shape,
            "exits": {"layers": m.exits.layers, "policy": m.exits.policy, "param": m.exits.param} if m.exits else None,
            "runtime": m.runtime,
            "parity": m.parity.model_dump() if m.parity else None,
            "parity_not_run": m.settings.get("parity_not_run"),
            "pending": m.pending,
            "runs_here": not_here is None,
            "not_here": not_here,
            "files": {k: v.model_dump() for k, v in m.files.items()},
            "size_bytes": sum(f.bytes for f in m.files.values()),
            "model_bytes": _model_bytes(m),
            "manifest_sha256": artifact.manifest_sha256(step.out),
            "step_key": step.key,
            "accuracy": None,
            "latency": None,
        }
        if not_here is None and baseline is not None:
            ev = pipe.evaluate(t.name, step.key, step.out)
            value, base = ev.summary["metrics"].get(metric), baseline.summary["metrics"].get(metric)
            if value is not None and base is not None:
                entry["accuracy"] = {
                    "metric": metric,
                    "value": value,
                    "baseline": base,
                    "drop_points": round((base - value) * 100, 4),
                    "data": data["dev"].path.name,
                    "n": ev.summary["n"],
                    "report": f"{REPORTS}/{t.name}.eval.json",
                }
            entry["_eval"] = ev
        if not_here is None and recipe.profile.enabled:
            pr = pipe.profile(t.name, step.key, step.out, m)
            entry["latency"] = {**pr.summary, "batch": 1, "host": host_fingerprint()["cpu"], "report": f"{REPORTS}/{t.name}.profile.json"}
            entry["_profile"] = pr
        entry["budgets"] = check_budgets(recipe, t.name, entry, not_here)
        entries[t.name] = entry

    results = [b for e in entries.values() for b in e["budgets"]]
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "kind": BUILD_KIND,
        "created": artifact.now(),
        "recipe": {
            "name": recipe.name,
            "path": str(recipe_path.resolve()),
            "sha256": recipe.sha256(),
            "file_sha256": hash_path(recipe_path),
            "description": recipe.description,
        },
        "checkpoint": {
            "path": str(info.path),
            "sha256": info.sha256(),
            "dir_sha256": model.id.removeprefix("model:"),
            "task": info.task,
            "model_type": info.model_type,
        },
        "data": {role: {"path": str(r.path), "sha256": r.id.removeprefix("data:")} for role, r in data.items()},
        "tools": tool_versions(),
        "host": host_fingerprint(),
        "steps": [
            {"step": s.name, "key": s.key, "cached": s.cached, "seconds": s.record["seconds"], "summary": s.summary} for s in runner.steps
        ],
        "targets_in_recipe": [t.name for t in recipe.targets],
        "targets_built": [t.name for t in chosen],
        "baseline": {
            "metric": metric,
            "value": baseline.summary["metrics"].get(metric),
            "artifact": "FP32 checkpoint exported to ONNX, on onnxruntime",
            "data": data["dev"].path.name,
        }
        if baseline
        else None,
        "artifacts": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in entries.items()},
        # passed: every budget checked and met; partly-checked: none failed, some could not be checked here
        "budgets": {
            "status": "failed"
            if any(r["status"] == "failed" for r in results)
            else "partly-checked"
            if any(r["status"] == "unchecked" for r in results)
            else "passed",
            "passed": [r for r in results if r["status"] == "passed"],
            "failed": [r for r in results if r["status"] == "failed"],
            "unchecked": [r for r in results if r["status"] == "unchecked"],
        },
        "reproducibility": REPRODUCIBILITY,
        "seconds": round(time.perf_counter() - t_start, 1),
        "cached_steps": sum(s.cached for s in runner.steps),
        "total_steps": len(runner.steps),
    }
    with artifact.staging(out) as tmp:
        say(f"writing {out}")
        for name, entry in entries.items():
            shutil.copytree(compiled[name].out, tmp / name)
            reports = tmp / REPORTS
            reports.mkdir(exist_ok=True)
            if "_eval" in entry:
                shutil.copy2(entry["_eval"].out, reports / f"{name}.eval.json")
            if "_profile" in entry:
                shutil.copy2(entry["_profile"].out, reports / f"{name}.profile.json")
        if baseline is not None:
            (tmp / REPORTS).mkdir(exist_ok=True)
            shutil.copy2(baseline.out, tmp / REPORTS / "fp32.eval.json")
        (tmp / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return BuildResult(out, manifest, strict)


def _select(recipe: Recipe, names: list[str] | None, source: Path) -> list[Target]:
    if not names:
        return list(recipe.targets)
    mine = {t.name: t for t in recipe.targets}
    unknown = [n for n in names if n not in mine]
    if unknown:
        raise ConfigError(f"{source}: --targets {unknown[0]!r} is not one of the recipe's targets", hint=f"its targets: {', '.join(mine)}")
    return [mine[n] for n in dict.fromkeys(names)]

"""The main job on one model: export -> compile for every target usable here -> eval -> profile.

``edgekit quickstart`` runs it on the embedded default model (all-MiniLM-L6-v2) with the
shipped real retrieval pairs, and prints one summary table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edgekit.build import compile as compile_step
from edgekit.build.checkpoint import DEFAULT
from edgekit.deploy import artifact, data, targets
from edgekit.deploy.eval import EvalReport, evaluate
from edgekit.deploy.profile import ProfileOptions, profile
from edgekit.deploy.report import ProfileReport


class Row(BaseModel):
    model_config = ConfigDict(frozen=True)
    target: str
    path: str
    size_mb: float
    parity_max_abs_diff: float
    eval: EvalReport
    profile: ProfileReport


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    model: str
    eval_data: str
    onnx: str
    rows: list[Row]
    skipped: dict[str, str]

    @property
    def quality_metrics(self) -> list[str]:
        keys = ("accuracy", "macro_f1", "recall@1", "recall@10", "mrr", "fidelity_cosine_min")
        return [k for k in keys if self.rows and all(k in r.eval.metrics for r in self.rows)]


def usable_targets(*, must_run: bool = False) -> tuple[list[str], dict[str, str]]:
    """Targets that compile here (and, with ``must_run``, whose artifacts also run here:
    the quickstart evaluates and profiles what it builds, so a compile-only target such as
    a TensorRT plan is listed as skipped with the reason)."""
    ok, skipped = [], {}
    for name, cls in targets.TARGETS.items():
        target = cls()
        try:
            target.check_available()
        except Exception as err:  # noqa: BLE001 - reported as skipped, with the reason
            skipped[name] = str(err)
            continue
        why = target.runs_here() if must_run else None
        if why is not None:
            skipped[name] = f"compiles here, runs elsewhere: {why}"
        else:
            ok.append(name)
    return ok, skipped


def _static_options(name: str) -> dict[str, str]:
    """Targets that need static shapes get their sequence buckets from the shipped texts."""
    fields = targets.TARGETS[name].options_model.model_fields
    return {"data": str(data.shipped(data.SAMPLE_TEXTS))} if "data" in fields else {}


def run(
    model: str | Path | None,
    out: str | Path,
    *,
    eval_data: str | Path | None = None,
    profile_options: ProfileOptions | None = None,
    say: Callable[[str], None] = print,
) -> Summary:
    out = Path(out)
    names, skipped = usable_targets(must_run=True)
    say("export: checkpoint -> ONNX (+ parity vs PyTorch)")
    onnx_dir, onnx_manifest = compile_step.ensure_onnx(model, out)
    eval_file = Path(eval_data) if eval_data else data.shipped(data.SAMPLE_PAIRS)
    opts = profile_options or ProfileOptions(seconds_per_point=1.0, min_runs=10, batches=[1, 8, 32], cold_runs=2)
    rows = []
    for name in names:
        say(f"compile: {name}")
        target_dir = out / name
        manifest = compile_step.compile_artifact(onnx_dir, onnx_manifest, name, target_dir, options=_static_options(name))
        say(f"eval: {name} on {eval_file.name}")
        report = evaluate(target_dir, eval_file)
        say(f"profile: {name}")
        prof = profile(target_dir, opts)
        reports = out / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        artifact.write_json(reports / f"{name}.eval.json", report.model_dump())
        artifact.write_json(reports / f"{name}.profile.json", prof.model_dump())
        size = sum(f.bytes for f in manifest.files.values()) / 1e6
        rows.append(
            Row(
                target=name, path=str(target_dir), size_mb=size, parity_max_abs_diff=manifest.parity.max_abs_diff, eval=report, profile=prof
            )
        )
    is_default = model is None or str(model) == DEFAULT
    name = "all-MiniLM-L6-v2 (default)" if is_default else Path(onnx_manifest.source.path).name
    summary = Summary(name=name, model=onnx_manifest.source.path, eval_data=eval_file.name, onnx=str(onnx_dir), rows=rows, skipped=skipped)
    (out / "summary.json").write_text(json.dumps(summary.model_dump(), indent=2, default=str) + "\n")
    return summary

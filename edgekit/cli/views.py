"""What the commands print: tables and lines built from the library's typed results.

Kept out of the commands so each command stays a thin wrapper. Tables fit 80 columns: short
column names, long text wrapped rather than cut.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from edgekit.cli.console import console, err_console


def parity_line(p, against: str = "PyTorch") -> str:
    figure = f"argmax agreement {p.argmax_agreement:.4f}" if p.argmax_agreement is not None else f"min cosine {p.min_cosine:.6f}"
    verdict = "ok" if p.passed else "FAILED"
    over = f", over it on {p.rows_over_atol} of {p.texts}" if p.rows_over_atol is not None else ""
    return f"parity vs {against} on {p.texts} real texts: max abs diff {p.max_abs_diff:.2e} (atol {p.atol:g}{over}), {figure} -> {verdict}"


def compiled(name: str, out: Path, manifest) -> None:
    """What ``edgekit compile`` says of one target's artifact."""
    console.print(f"[green]compiled[/] {name} ({manifest.precision}) -> {out}")
    if manifest.exits is not None and "exit_parity" in manifest.settings:
        p = manifest.settings["exit_parity"]
        console.print(f"  {p['same_exit_layer']:.0%} of {p['rows']} rows exit where PyTorch does, max abs diff {p['max_abs_diff']:.1e}")
    elif manifest.parity is not None:
        console.print("  " + parity_line(manifest.parity))
    else:
        console.print(f"  [yellow]not executed here:[/] {escape(manifest.settings.get('parity_not_run', ''))}")
    if manifest.pending:
        console.print(f"  [yellow]still to do on the device:[/] {escape(manifest.pending)}")


def metrics(title: str, values: dict[str, float], notes: list[str]) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in values.items():
        t.add_row(k, f"{v:.4f}")
    console.print(t)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def targets(rows: list[tuple[str, str, str | None, str | None, str]]) -> None:
    """(name, runtime, why it cannot compile here, why its artifacts cannot run here, description)."""
    t = Table(title="targets")
    for col in ("target", "runtime", "compiles here", "runs here", "description"):
        t.add_column(col, no_wrap=col == "target", overflow="fold")
    for name, runtime, no_compile, no_run, description in rows:
        compiles = "[green]yes[/]" if no_compile is None else f"[red]no[/]: {escape(no_compile)}"
        runs = "[red]no[/]" if no_compile is not None else "[green]yes[/]" if no_run is None else f"[yellow]no[/]: {escape(no_run)}"
        t.add_row(name, runtime, compiles, runs, description)
    console.print(t)


def devices(rows: list[tuple[str, object, bool, str]]) -> None:
    t = Table(title="device profiles")
    for col in ("device", "targets", "precisions", "usable here", "description"):
        t.add_column(col, no_wrap=col == "device", overflow="fold")
    for name, p, ok, why in rows:
        usable = f"[green]yes[/] ({escape(why)})" if ok else f"[red]no[/]: {escape(why)}"
        t.add_row(name, ", ".join(p.targets), ", ".join(p.precisions), usable, p.description)
    console.print(t)


def build_summary(result) -> None:
    """The table of ``edgekit build`` and ``edgekit quickstart``: each artifact, its figures, its budgets."""
    m = result.manifest
    metric = m.baseline.metric if m.baseline else "accuracy"
    t = Table(title=f"{m.recipe.get('name')}: {result.path}")
    for col in ("target", "prec", "MB", "parity", f"{metric} (drop)", "p50 ms", "budgets"):
        t.add_column(col, justify="left" if col in ("target", "budgets", "parity") else "right", overflow="fold")
    for name, a in m.artifacts.items():
        par = a.parity
        parity = (("ok" if par["passed"] else "FAILED") + f" {par['max_abs_diff']:.0e}") if par else "-"
        status = {b.status for b in a.budgets}
        shown = (
            "[red]failed[/]"
            if "failed" in status
            else "[yellow]unchecked[/]"
            if "unchecked" in status
            else "[green]passed[/]"
            if status
            else "-"
        )
        acc = f"{a.accuracy.value:.4f} ({a.accuracy.drop_points:.2f})" if a.accuracy else "-"
        t.add_row(name, a.precision, f"{a.model_bytes / 1e6:.1f}", parity, acc, f"{a.latency.p50_ms:.2f}" if a.latency else "-", shown)
    console.print(t)
    for name, a in m.artifacts.items():
        if not a.runs_here:
            console.print(f"[yellow]{escape(name)}[/]: produced here, runs on the device only: {escape(a.not_here or '')}", highlight=False)
    for name, why in m.skipped.items():
        console.print(f"[yellow]skipped[/] {escape(name)}: {escape(why)}", highlight=False)
    if m.baseline:
        console.print(f"FP32 checkpoint: {m.baseline.metric} {m.baseline.value:.4f} on {m.baseline.data}")
    console.print(f"{m.cached_steps} of {m.total_steps} steps from the cache; {m.seconds:.1f}s; manifest: {result.path / 'manifest.json'}")


def budget_failures(result, strict: bool) -> None:
    for b in result.failed:
        value = f"{b.value:g}" if isinstance(b.value, float | int) else str(b.value)
        line = f"{b.target}: {b.budget} = {value} {b.unit} > limit {b.limit:g} {b.unit}" + (f" ({b.detail})" if b.detail else "")
        err_console.print(f"[red]budget failed:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for b in result.unchecked:
        label = "[red]budget not checked (--strict):[/]" if strict else "[yellow]budget not checked here:[/]"
        err_console.print(
            f"{label} {escape(b.target)} {escape(b.budget)} <= {b.limit:g} {b.unit}: {escape(b.reason or '')}",
            highlight=False,
            soft_wrap=True,
        )


def quickstart(result) -> None:
    """Quality and speed of every artifact of the quickstart, from its build manifest and reports."""
    from edgekit.deploy import report as schema

    m, root = result.manifest, result.path
    evals = {n: json.loads((root / "reports" / f"{n}.eval.json").read_text()) for n in m.artifacts}
    keys = ("accuracy", "macro_f1", "recall@1", "recall@10", "mrr", "fidelity_cosine_min")
    shown = [k for k in keys if evals and all(k in e["metrics"] for e in evals.values())]
    short = {"fidelity_cosine_min": "fidelity", "recall@1": "R@1", "recall@10": "R@10"}
    q = Table(title=f"quality of each artifact on {m.baseline.data if m.baseline else 'dev'}")
    for col in ("target", *(short.get(k, k) for k in shown), "parity", "MB"):
        q.add_column(col, justify="left" if col == "target" else "right")
    for n, a in m.artifacts.items():
        q.add_row(n, *(f"{evals[n]['metrics'][k]:.4f}" for k in shown), f"{a.parity['max_abs_diff']:.1e}", f"{a.model_bytes / 1e6:.1f}")
    console.print(q)
    s = Table(title="speed on this machine (ms unless noted)")
    for col in ("target", "p50", "p90", "p99", "e2e p50", "best seq/s", "tok/s", "cold"):
        s.add_column(col, justify="left" if col == "target" else "right")
    for n in m.artifacts:
        r = schema.load(root / "reports" / f"{n}.profile.json")
        ft, cold = r.first_token, r.cold_first_result
        best = next(p for p in r.throughput if p.best)
        s.add_row(
            n,
            f"{ft.model_only.p50:.1f}",
            f"{ft.model_only.p90:.1f}",
            f"{ft.model_only.p99:.1f}",
            f"{ft.end_to_end.p50:.1f}",
            f"{best.seq_per_s:.1f} (b{best.batch})",
            f"{best.tokens_per_s:.0f}",
            f"{cold.total_ms:.0f}" if cold else "-",
        )
    console.print(s)
    console.print(f"p50/p90/p99: batch-1 model-only latency at {ft.seq_len} tokens; cold: fresh process to first output")
    for name, why in m.skipped.items():
        console.print(f"[yellow]skipped[/] {escape(name)}: {escape(why)}", highlight=False)
    console.print(f"artifacts and reports under {root}/ (manifest.json, reports/*.json)")


def training_progress(what: str):
    """A progress bar for exit-head training: a context manager yielding the ``progress`` callback."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar():
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as p:
            task = p.add_task(what, total=1, info="")

            def progress(stage: str, done: int, total: int, epoch: int = 0, epochs: int = 0, loss: float | None = None) -> None:
                label = {"features": "features", "dev": f"dev score {epoch}/{epochs}"}.get(stage, f"epoch {epoch}/{epochs}")
                p.update(task, description=label, completed=done, total=total, info=f"loss {loss:.4f}" if loss is not None else "")

            yield progress

    return bar()


def stage_progress(what: str):
    """A progress bar over named stages (calibration): a context manager yielding ``progress(stage, done, total)``."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as p:
            task = p.add_task(what, total=None)

            def progress(stage: str, done: int, total: int) -> None:
                p.update(task, description=f"{what}: {stage}", completed=done, total=total)

            yield progress

    return bar()


def profiles(reports, comparison) -> None:
    """What ``edgekit profile`` prints: the latency table, the comparison, memory and warnings."""
    from edgekit.deploy.render import comparison_table, latency_table

    console.print(latency_table(reports))
    if comparison:
        console.print(comparison_table(comparison))
    for r in reports:
        if r.memory.peak_rss_mb:
            console.print(f"{r.artifact.target}: peak RSS {r.memory.peak_rss_mb:.0f} MB ({r.memory.source})")
        for w in r.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}")

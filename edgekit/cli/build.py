"""CLI commands of the build step, registered on the main app by :mod:`edgekit.cli.app`.

``edgekit build RECIPE`` and ``edgekit recipe check|new``. Exit codes: 0 built, budgets
passed; 2 a user error; 3 a budget failed (``--strict``: or could not be checked here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (imports stay inside the commands)."""
    recipe_app = typer.Typer(no_args_is_help=True, help="Recipes: validate one, or write a commented starter.")
    app.add_typer(recipe_app, name="recipe")

    @app.command(name="build")
    def build_(
        recipe: Annotated[Path, typer.Argument(help="recipe YAML (see 'edgekit recipe new')")],
        targets: Annotated[
            str | None,
            typer.Option("--targets", help="build only these of the recipe's targets, comma-separated, e.g. ort-cpu,openvino-cpu"),
        ] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step again (results still go to the cache)")] = False,
        strict: Annotated[bool, typer.Option("--strict", help="a budget that cannot be checked here fails the build too (exit 3)")] = False,
    ) -> None:
        """Run a recipe: steps in order (cached), every target, eval + profile, budgets, OUTPUT/NAME/manifest.json.

        Exit code 3 when a budget fails (the CI gate), with the failing figures printed.
        """
        from rich.markup import escape

        from edgekit.build.runner import build
        from edgekit.cli.console import console, err_console

        names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
        result = build(
            recipe,
            targets=names,
            use_cache=not no_cache,
            strict=strict,
            say=lambda m: console.print(f"[cyan]>[/] {escape(m)}", highlight=False),
        )
        _summary(console, result)
        code = result.exit_code
        for b in result.failed:
            err_console.print(f"[red]budget failed:[/] {escape(_budget_line(b))}", highlight=False, soft_wrap=True)
        for b in result.unchecked:
            label = "[red]budget not checked (--strict):[/]" if strict else "[yellow]budget not checked here:[/]"
            err_console.print(
                f"{label} {escape(b['target'])} {escape(b['budget'])} <= {b['limit']:g} {b['unit']}: {escape(b['reason'] or '')}",
                highlight=False,
                soft_wrap=True,
            )
        if code:
            raise typer.Exit(code)

    @recipe_app.command("check")
    def recipe_check(recipe: Annotated[Path, typer.Argument(help="recipe YAML")]) -> None:
        """Validate a recipe without running it: schema, model, data files, targets."""
        from rich.markup import escape

        from edgekit.build import recipe as schema
        from edgekit.cli.console import console

        r = schema.load(recipe)
        notes = schema.check_files(r, str(recipe))
        console.print(f"[green]ok[/] {recipe}: {r.name} (recipe sha256 {r.sha256()[:12]})")
        console.print(f"  model: {r.model}; steps: {' -> '.join([*r.step_names(), 'compile', 'eval', 'profile'])}")
        console.print(f"  targets: {', '.join(t.name + (f' ({t.device})' if t.device else '') for t in r.targets)}")
        budgets = {k: v for k, v in r.budgets.model_dump().items() if v not in (None, {})}
        console.print(f"  budgets: {escape(str(budgets)) if budgets else 'none'}; output: {r.output}/{r.name}/")
        for note in notes:
            console.print(f"  [yellow]note:[/] {escape(note)}")

    @recipe_app.command("new")
    def recipe_new(
        path: Annotated[Path, typer.Argument(help="where to write the starter recipe")] = Path("recipe.yaml"),
        force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
    ) -> None:
        """Write a commented starter recipe (MiniLM -> ternary W2A8 -> openvino-cpu + ort-mobile)."""
        from edgekit.build.recipe import TEMPLATE
        from edgekit.cli.console import console
        from edgekit.errors import ConfigError

        if path.exists() and not force:
            raise ConfigError(f"{path}: already exists", hint="pass --force to overwrite it, or another path")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(TEMPLATE)
        except OSError as err:
            raise ConfigError(f"{path}: cannot write ({err.strerror})", hint="choose a writable path") from err
        console.print(f"wrote {path}; next: edgekit recipe check {path} && edgekit build {path}")


def _budget_line(b: dict) -> str:
    value = f"{b['value']:g}" if isinstance(b["value"], float | int) else str(b["value"])
    return f"{b['target']}: {b['budget']} = {value} {b['unit']} > limit {b['limit']:g} {b['unit']}" + (
        f" ({b['detail']})" if b.get("detail") else ""
    )


def _summary(console, result) -> None:
    from rich.markup import escape
    from rich.table import Table

    m = result.manifest
    metric = m["baseline"]["metric"] if m["baseline"] else "accuracy"
    t = Table(title=f"{m['recipe']['name']}: {result.path}")
    for col in ("target", "precision", "model MB", "parity", f"{metric} (drop pts)", "p50 ms", "budgets"):
        t.add_column(col, justify="left" if col in ("target", "budgets", "parity") else "right", no_wrap=col == "target")
    for name, a in m["artifacts"].items():
        acc = a["accuracy"]
        par = a["parity"]
        parity = ("ok" if par["passed"] else "FAILED") + f" {par['max_abs_diff']:.0e}" if par else "-"
        status = {r["status"] for r in a["budgets"]}
        shown = (
            "[red]failed[/]"
            if "failed" in status
            else "[yellow]not checked[/]"
            if "unchecked" in status
            else "[green]passed[/]"
            if status
            else "-"
        )
        t.add_row(
            name,
            a["precision"],
            f"{a['model_bytes'] / 1e6:.1f}",
            parity,
            f"{acc['value']:.4f} ({acc['drop_points']:.2f})" if acc else "-",
            f"{a['latency']['p50_ms']:.2f}" if a["latency"] else "-",
            shown,
        )
    console.print(t)
    for name, a in m["artifacts"].items():
        if not a["runs_here"]:
            console.print(
                f"[yellow]{escape(name)}[/]: produced here, runs on the device only: {escape(a['not_here'] or '')}", highlight=False
            )
    if m["baseline"]:
        console.print(f"FP32 checkpoint: {m['baseline']['metric']} {m['baseline']['value']:.4f} on {m['baseline']['data']}")
    console.print(
        f"{m['cached_steps']} of {m['total_steps']} steps from the cache; {m['seconds']:.1f}s; manifest: {result.path / 'manifest.json'}"
    )

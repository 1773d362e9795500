"""``edgekit build RECIPE`` and ``edgekit recipe check|new``.

Exit codes: 0 built, budgets passed; 2 a user error; 3 a budget failed (``--strict``: or could
not be checked here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekit.cli.console import console
from edgekit.cli.options import names

recipe_app = typer.Typer(no_args_is_help=True, help="Recipes: validate one, or write a commented starter.")


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
    app.command(name="build")(build_)


def build_(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (see 'edgekit recipe new')")],
    targets: Annotated[
        str | None, typer.Option("--targets", help="build only these of the recipe's targets, e.g. ort-cpu,openvino-cpu")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step again (results still go to the cache)")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="a budget that cannot be checked here fails the build too (exit 3)")] = False,
) -> None:
    """Run a recipe: steps in order (cached), every target, eval + profile, budgets, OUTPUT/NAME/manifest.json.

    Exit code 3 when a budget fails (the CI gate), with the failing figures printed.
    """
    from edgekit.build import runner
    from edgekit.cli.views import budget_failures, build_summary

    say = lambda m: console.print(f"[cyan]>[/] {escape(m)}", highlight=False)  # noqa: E731
    result = runner.build(recipe, targets=names(targets), use_cache=not no_cache, strict=strict, say=say)
    build_summary(result)
    budget_failures(result, strict)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@recipe_app.command("check")
def recipe_check(recipe: Annotated[Path, typer.Argument(help="recipe YAML")]) -> None:
    """Validate a recipe without running it: schema, target options, model, data files (no torch needed)."""
    from edgekit.build import plan, recipe_check
    from edgekit.build import recipe as schema

    r = schema.load(recipe)
    p = plan.from_recipe(r, recipe)
    notes = recipe_check.check_files(r, str(recipe))
    console.print(f"[green]ok[/] {recipe}: {r.name} (recipe sha256 {r.sha256()[:12]})")
    console.print(f"  model: {r.model}; steps: {' -> '.join([*r.step_names(), 'compile', 'eval', 'profile'])}")
    console.print(f"  targets: {', '.join(t.name + (f' ({t.device})' if t.device else '') for t in p.targets)}")
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
    from edgekit.build.recipe_check import write_template

    write_template(path, force=force)
    console.print(f"wrote {path}; next: edgekit recipe check {path} && edgekit build {path}")

"""``edgekit export``, ``edgekit compile`` and ``edgekit quickstart``: each builds a plan and runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekit.cli.console import console
from edgekit.cli.options import AtolOpt, CacheOpt, MinAgreeOpt, MinCosOpt, ModelArg, OptionOpt, StaticOpt, TargetsOpt, TaskOpt, key_values


def _say(message: str) -> None:
    console.print(f"[cyan]>[/] {escape(message)}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        model: ModelArg = None,
        out: Annotated[Path, typer.Option(help="artifact directory to write")] = Path("build/model"),
        task: TaskOpt = None,
        static_shape: StaticOpt = None,
        max_length: Annotated[int | None, typer.Option(help="cap the sequence length (default: the model's)")] = None,
        atol: AtolOpt = None,
        min_cosine: MinCosOpt = None,
        min_agreement: MinAgreeOpt = None,
    ) -> None:
        """Export a checkpoint to ONNX, checked against PyTorch on real text."""
        from edgekit.build import plan, runner
        from edgekit.cli.views import parity_line
        from edgekit.deploy import artifact

        settings = plan.export_settings(static_shape, max_length, atol, min_cosine, min_agreement)
        runner.run(plan.for_export(model or "default", out, task=task, export=settings), say=_say)
        manifest = artifact.read_manifest(out)
        console.print(f"[green]exported[/] {manifest.source.model_type} {manifest.task} -> {out}/{manifest.model_file}")
        console.print(parity_line(manifest.parity))

    @app.command()
    def compile(
        model: Annotated[str | None, typer.Argument(help="checkpoint dir, 'default', or an 'edgekit export' directory")] = None,
        target: TargetsOpt = [],  # noqa: B006
        out: Annotated[Path, typer.Option(help="output root: writes OUT/<target>/ (and OUT/onnx/ when exporting)")] = Path("dist/model"),
        option: OptionOpt = [],  # noqa: B006
        device: Annotated[str | None, typer.Option(help="device profile (see 'edgekit devices'): checks targets and precision")] = None,
        task: TaskOpt = None,
        static_shape: StaticOpt = None,
        atol: AtolOpt = None,
        min_cosine: MinCosOpt = None,
        min_agreement: MinAgreeOpt = None,
        cache: CacheOpt = None,
    ) -> None:
        """Compile for one or more targets (exports first when given a checkpoint)."""
        from edgekit.build import plan, runner
        from edgekit.cli.views import compiled
        from edgekit.deploy import artifact, devices

        names = target or [devices.get(device).targets[0] if device else "ort-cpu"]
        options = key_values(option)
        settings = plan.export_settings(static_shape, None, atol, min_cosine, min_agreement)
        p = plan.for_compile(model or "default", out, [(n, options) for n in names], device=device, task=task, export=settings, cache=cache)
        runner.run(p, say=_say)
        for name in names:
            compiled(name, out / name, artifact.read_manifest(out / name))

    @app.command()
    def quickstart(
        model: ModelArg = None,
        out: Annotated[Path, typer.Option(help="output folder")] = Path("dist/quickstart"),
        data: Annotated[Path | None, typer.Option(help="eval data (default: shipped real query/doc pairs)")] = None,
        seconds: Annotated[float, typer.Option(help="time budget per profiled point")] = 1.0,
        cache: CacheOpt = None,
    ) -> None:
        """The main job: export -> compile for every target that runs here -> eval -> profile -> summary."""
        from edgekit.build import plan, runner
        from edgekit.build.recipe import Profile
        from edgekit.cli.views import quickstart as view
        from edgekit.deploy import data as datafiles

        eval_data = str(data or datafiles.shipped(datafiles.SAMPLE_PAIRS))
        profile = Profile(seconds=seconds, min_runs=10, batches=[1, 8, 32], cold_runs=2)
        view(runner.run(plan.for_quickstart(model or "default", out, eval_data=eval_data, profile=profile, cache=cache), say=_say))

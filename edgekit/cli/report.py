"""``edgekit report``: import foreign benchmark results, write the schema, show reports, one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekit.cli.console import console

app = typer.Typer(
    no_args_is_help=True, help="Profile reports: import trtexec / benchmark_app results, show several side by side, share as HTML."
)


@app.command("import")
def report_import(
    file: Annotated[Path, typer.Argument(help="trtexec --exportTimes JSON, or benchmark_app -json_stats report (file or -report_folder)")],
    format: Annotated[str | None, typer.Option("--format", help="trtexec-times | benchmark-app (default: detected)")] = None,
    batch: Annotated[int, typer.Option(help="batch size the tool ran (trtexec files do not record it)")] = 1,
    seq_len: Annotated[int | None, typer.Option(help="sequence length the tool ran")] = None,
    name: Annotated[str | None, typer.Option(help="artifact name to show in tables")] = None,
    target: Annotated[str | None, typer.Option(help="target to record, e.g. jetson or openvino-npu")] = None,
    layers: Annotated[
        Path | None, typer.Option(help="per-layer file to summarise: trtexec --exportProfile, or benchmark_app counters")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="where the edgekit profile JSON goes (default: FILE.edgekit.json)")
    ] = None,
) -> None:
    """Convert a foreign latency report into edgekit's profile schema (what the tool did not measure stays empty)."""
    from edgekit.deploy import artifact, foreign
    from edgekit.deploy.render import latency_table

    r = foreign.import_report(file, format, batch=batch, seq_len=seq_len, name=name, target=target, layers=layers)
    dest = json_out or file.with_name(file.name + ".edgekit.json")
    artifact.write_json(dest, r.model_dump())
    console.print(latency_table([r]))
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print(f"imported -> {dest}")


@app.command("schema")
def report_schema(
    out: Annotated[Path, typer.Option(help="where the JSON Schema goes")] = Path("docs/profile.schema.json"),
) -> None:
    """Write the JSON Schema of edgekit's profile report (versioned; docs/profile.schema.json in the repo)."""
    import json

    from edgekit.deploy import artifact
    from edgekit.deploy import report as schema

    out.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(out, json.dumps(schema.json_schema(), indent=2, sort_keys=True) + "\n")
    console.print(f"profile schema v{schema.SCHEMA_VERSION} -> {out}")


@app.command("show")
def report_show(
    files: Annotated[list[Path], typer.Argument(help="edgekit profile JSON files (measured or imported); ratios are to the first")],
    markdown: Annotated[Path | None, typer.Option(help="also write a Markdown summary here")] = None,
) -> None:
    """Show profile reports from any device side by side, with ratios to the first."""
    from edgekit.deploy import artifact
    from edgekit.deploy import report as schema
    from edgekit.deploy.render import comparison_table, latency_table
    from edgekit.deploy.render import markdown as to_markdown

    reports = [schema.load(f) for f in files]
    comparison = schema.Comparison(created=reports[0].created, reports=reports, ratios=schema.ratios(reports)) if len(reports) > 1 else None
    console.print(latency_table(reports))
    if comparison:
        console.print(comparison_table(comparison))
    if markdown:
        artifact.write_text(markdown, to_markdown(reports, comparison))
        console.print(f"markdown -> {markdown}")


@app.command("html")
def report_html(
    reports: Annotated[
        list[Path],
        typer.Argument(help="profile / comparison / eval JSON, exits calibration.json, or folders of them (ratios: to the first profile)"),
    ],
    out: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="page title")] = "edgekit report",
    plots: Annotated[bool, typer.Option(help="inline PNG plots (needs matplotlib)")] = True,
) -> None:
    """One self-contained HTML page (tables, plots inlined; no external assets) to share or attach to CI."""
    from edgekit.deploy import html

    path = html.write(reports, out, title=title, plots=plots)
    console.print(f"html -> {path} ({path.stat().st_size / 1024:.0f} KiB)")

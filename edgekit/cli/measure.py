"""``edgekit profile`` and ``edgekit eval``: measure artifacts with their own runtime (deploy side, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import console
from edgekit.cli.options import ints, profile_options


def register(app: typer.Typer) -> None:
    @app.command()
    def profile(
        artifacts: Annotated[list[Path], typer.Argument(help="artifact directories (from compile or export); several are compared")],
        compare: Annotated[
            bool, typer.Option("--compare", help="compare the artifacts in one interleaved run (implied by several)")
        ] = False,
        seq_len: Annotated[int, typer.Option(help="fixed sequence length (first-token and throughput)")] = 128,
        seq_lens: Annotated[str | None, typer.Option(help="also sweep batch-1 latency over these lengths, e.g. 16,32,64,128,256")] = None,
        text_file: Annotated[Path | None, typer.Option(help="draw first-token inputs from this real text file (.txt/.jsonl/.csv)")] = None,
        batches: Annotated[
            str | None, typer.Option(help="throughput batch sizes, e.g. 1,4,16,32 (default; a static artifact: its batch)")
        ] = None,
        seconds: Annotated[float, typer.Option(help="time budget per measured point")] = 2.0,
        min_runs: Annotated[int, typer.Option(help="timed runs per point, at least")] = 20,
        max_runs: Annotated[int, typer.Option(help="timed runs per point, at most")] = 2000,
        warmup: Annotated[int, typer.Option(help="untimed runs before each point (more while timings settle)")] = 5,
        cold_runs: Annotated[int, typer.Option(help="fresh-process cold starts (0 skips)")] = 3,
        threads: Annotated[int | None, typer.Option(help="runtime threads (default: the runtime's)")] = None,
        out: Annotated[Path | None, typer.Option(help="report folder (default: FIRST_ARTIFACT/../reports)")] = None,
        plots: Annotated[bool, typer.Option(help="write PNG plots (needs matplotlib)")] = True,
        host: Annotated[
            str | None, typer.Option(help="profile on a remote device over SSH, e.g. user@jetson (artifact copied there)")
        ] = None,
        remote_edgekit: Annotated[str, typer.Option(help="the edgekit command on the remote host")] = "edgekit",
        port: Annotated[int | None, typer.Option(help="SSH port of --host")] = None,
        ssh_option: Annotated[
            list[str], typer.Option("--ssh-option", help="extra ssh -o option for --host, e.g. IdentityFile=~/.ssh/jetson")
        ] = [],  # noqa: B006
    ) -> None:
        """Latency (first-token, cold start), throughput and memory, measured with each artifact's own runtime.

        Writes JSON, a Markdown summary and PNG plots; with several artifacts, measures them in
        one interleaved run and reports ratios to the first.
        """
        from edgekit.cli.views import profiles
        from edgekit.deploy import profile as step
        from edgekit.deploy import report as schema
        from edgekit.deploy.remote import remote_profile

        flags = {"seq_lens": ints(seq_lens, "--seq-lens") or [], "batches": ints(batches, "--batches"), "seconds_per_point": seconds}
        opts = profile_options(
            seq_len=seq_len,
            text_file=text_file,
            min_runs=min_runs,
            max_runs=max_runs,
            warmup=warmup,
            cold_runs=cold_runs,
            threads=threads,
            **flags,
        )
        with console.status("profiling") as status:
            say = lambda m: status.update(f"profiling: {m}")  # noqa: E731
            if host:
                remote = {"port": port, "edgekit": remote_edgekit, "ssh_options": ssh_option, "progress": say}
                reports = [remote_profile(a, host, opts, **remote) for a in artifacts]
            else:
                reports = step.profile_many(artifacts, opts, progress=say)
        several = len(reports) > 1 or compare
        comparison = schema.Comparison(created=reports[0].created, reports=reports, ratios=schema.ratios(reports)) if several else None
        profiles(reports, comparison)
        stem = "compare" if comparison else f"{reports[0].artifact.target}.profile"
        written = step.write_reports(reports, comparison, out or artifacts[0].resolve().parent / "reports", stem, plots=plots)
        console.print("reports: " + ", ".join(str(p) for p in written))

    @app.command(name="eval")
    def eval_(
        artifact_dir: Annotated[Path, typer.Argument(help="artifact directory (from compile or export)")],
        data: Annotated[
            Path, typer.Option(help="JSONL/CSV: {text,label} for classifiers; {query,doc} pairs or {text} for embedding models")
        ],
        batch: Annotated[int, typer.Option(min=1, help="batch size")] = 16,
        fidelity: Annotated[bool, typer.Option(help="also compare with the source PyTorch model (needs torch)")] = True,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="report path (default: ARTIFACT_DIR/../reports/<target>.eval.json)")
        ] = None,
        docs_without_exits: Annotated[
            bool,
            typer.Option(
                help="query/doc pairs on an early-exit artifact: embed the docs with the single graph it ships (an index "
                "built offline by the model without exits); only the queries take exits (as 'exits calibrate --queries-only')"
            ),
        ] = False,
    ) -> None:
        """Accuracy of the artifact itself on your data (and fidelity to the PyTorch model)."""
        from edgekit.cli.views import metrics
        from edgekit.deploy import artifact
        from edgekit.deploy.eval import evaluate

        reference = None
        if fidelity:  # the PyTorch reference is build side: a deploy install without torch skips it with a note
            from edgekit.build.load import torch_reference as reference

        with console.status("evaluating") as status:
            report = evaluate(
                artifact_dir,
                data,
                batch=batch,
                fidelity=fidelity,
                reference=reference,
                progress=lambda m: status.update(f"eval: {m}"),
                docs_without_exits=docs_without_exits,
            )
        metrics(f"{report.target} on {data.name} ({report.n} texts)", report.metrics, report.notes)
        path = json_out or artifact_dir.resolve().parent / "reports" / f"{report.target}.eval.json"
        artifact.write_json(path, report.model_dump())
        console.print(f"report: {path}")

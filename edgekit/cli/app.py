"""The ``edgekit`` command line: parse options, call the library, print the result.

Library modules are imported inside each command so ``edgekit --help`` stays fast and
never imports torch, openvino or tensorrt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekit import env
from edgekit.cli.console import console, err_console
from edgekit.errors import ConfigError, EdgekitError

app = typer.Typer(
    name="edgekit",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Take trained transformer encoders to edge devices: export, compile, profile, eval.",
)
_state = {"debug": False}

ModelArg = Annotated[str | None, typer.Argument(help="checkpoint directory, or 'default' (all-MiniLM-L6-v2)", show_default="default")]
TaskOpt = Annotated[str | None, typer.Option(help="classifier | embedding (default: detected from the checkpoint)")]
StaticOpt = Annotated[str | None, typer.Option("--static-shape", help="fixed BATCHxSEQUENCE, e.g. 1x128 (default: dynamic axes)")]
AtolOpt = Annotated[float | None, typer.Option(help="parity: max abs difference to PyTorch (default 1e-3 for fp32)")]
MinCosOpt = Annotated[float | None, typer.Option(help="parity: lowest cosine to PyTorch for embeddings (default 0.9999 for fp32)")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for user errors too")] = False) -> None:
    _state["debug"] = debug or env.debug()


def _tolerance(atol: float | None, min_cosine: float | None, precision: str = "fp32"):
    from edgekit.deploy.parity import TOLERANCES, Tolerance

    base = TOLERANCES.get(precision, Tolerance())
    updates = {k: v for k, v in {"atol": atol, "min_cosine": min_cosine}.items() if v is not None}
    if not updates:
        return None
    try:
        return Tolerance.model_validate({**base.model_dump(), **updates})
    except Exception as err:
        raise ConfigError(f"invalid tolerance: {str(err).splitlines()[-1].strip()}", hint="atol > 0, -1 <= min-cosine <= 1") from err


def _export_options(static_shape: str | None, max_length: int | None, atol: float | None, min_cosine: float | None):
    from edgekit.build.export import ExportOptions, parse_shape

    tol = _tolerance(atol, min_cosine)
    fields = {"static_shape": parse_shape(static_shape), "max_length": max_length}
    if tol is not None:
        fields["tolerance"] = tol
    return ExportOptions(**fields)


def _parity_line(p) -> str:
    figure = f"argmax agreement {p.argmax_agreement:.4f}" if p.argmax_agreement is not None else f"min cosine {p.min_cosine:.6f}"
    return f"parity vs PyTorch on {p.texts} real texts: max abs diff {p.max_abs_diff:.2e} (atol {p.atol:g}), {figure} -> {'ok' if p.passed else 'FAILED'}"


@app.command()
def export(
    model: ModelArg = None,
    out: Annotated[Path, typer.Option(help="artifact directory to write")] = Path("build/model"),
    task: TaskOpt = None,
    static_shape: StaticOpt = None,
    max_length: Annotated[int | None, typer.Option(help="cap the sequence length (default: the model's)")] = None,
    atol: AtolOpt = None,
    min_cosine: MinCosOpt = None,
) -> None:
    """Export a checkpoint to ONNX, checked against PyTorch on real text."""
    from edgekit.build.export import export as run_export

    manifest = run_export(model or "default", out, _export_options(static_shape, max_length, atol, min_cosine), task=task)
    console.print(f"[green]exported[/] {manifest.source.model_type} {manifest.task} -> {out}/{manifest.model_file}")
    console.print(_parity_line(manifest.parity))


@app.command()
def compile(
    model: Annotated[str | None, typer.Argument(help="checkpoint dir, 'default', or an 'edgekit export' directory")] = None,
    target: Annotated[
        list[str],
        typer.Option(
            "--target", "-t", help="target name (repeatable; default ort-cpu, or the device's first target); see 'edgekit targets'"
        ),
    ] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="output root: writes OUT/<target>/ (and OUT/onnx/ when exporting)")] = Path("dist/model"),
    option: Annotated[list[str], typer.Option("--option", "-o", help="target option KEY=VALUE (repeatable), e.g. precision=bf16")] = [],  # noqa: B006
    device: Annotated[
        str | None, typer.Option(help="device profile (see 'edgekit devices'): checks targets and precision, records the device")
    ] = None,
    task: TaskOpt = None,
    static_shape: StaticOpt = None,
    atol: AtolOpt = None,
    min_cosine: MinCosOpt = None,
) -> None:
    """Compile for one or more targets (exports first when given a checkpoint)."""
    from edgekit.build import compile as step

    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid --option {item!r}", hint="write KEY=VALUE, e.g. --option precision=bf16")
        options[key.strip()] = value.strip()
    from edgekit.deploy import targets

    if device:
        from edgekit.deploy import devices

        target, per_target = devices.compile_plan(devices.get(device), target, options)
    else:
        target = target or ["ort-cpu"]
        per_target = {name: options for name in target}
    for name in target:  # fail fast on any bad target before exporting
        step.target_options(targets.get(name), per_target[name])
        targets.get(name).check_available()
    onnx_dir, onnx_manifest = step.ensure_onnx(
        model or "default", out, task=task, export_options=_export_options(static_shape, None, atol, min_cosine)
    )
    for name in target:
        precision = options.get("precision", "fp32")
        manifest = step.compile_artifact(
            onnx_dir, onnx_manifest, name, out / name, options=per_target[name], tolerance=_tolerance(atol, min_cosine, precision)
        )
        console.print(f"[green]compiled[/] {name} ({manifest.precision}) -> {out / name}")
        if manifest.parity is not None:
            console.print("  " + _parity_line(manifest.parity))
        else:
            console.print(f"  [yellow]not executed here:[/] {escape(manifest.settings.get('parity_not_run', ''))}")
        if manifest.pending:
            console.print(f"  [yellow]still to do on the device:[/] {escape(manifest.pending)}")


@app.command()
def profile(
    artifacts: Annotated[list[Path], typer.Argument(help="artifact directories (from compile or export); several are compared")],
    compare: Annotated[bool, typer.Option("--compare", help="compare the artifacts in one interleaved run (implied by several)")] = False,
    seq_len: Annotated[int, typer.Option(help="fixed sequence length (first-token and throughput)")] = 128,
    seq_lens: Annotated[str | None, typer.Option(help="also sweep batch-1 latency over these lengths, e.g. 16,32,64,128,256")] = None,
    text_file: Annotated[Path | None, typer.Option(help="draw first-token inputs from this real text file (.txt/.jsonl/.csv)")] = None,
    batches: Annotated[
        str | None, typer.Option(help="throughput sweep batch sizes, comma-separated (default 1,4,16,32; a static artifact: its batch)")
    ] = None,
    seconds: Annotated[float, typer.Option(help="time budget per measured point")] = 2.0,
    min_runs: Annotated[int, typer.Option(help="timed runs per point, at least")] = 20,
    max_runs: Annotated[int, typer.Option(help="timed runs per point, at most")] = 2000,
    warmup: Annotated[int, typer.Option(help="untimed runs before each point (more while timings settle)")] = 5,
    cold_runs: Annotated[int, typer.Option(help="fresh-process cold starts (0 skips)")] = 3,
    threads: Annotated[int | None, typer.Option(help="runtime threads (default: the runtime's)")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: FIRST_ARTIFACT/../reports)")] = None,
    plots: Annotated[bool, typer.Option(help="write PNG plots (needs matplotlib)")] = True,
    host: Annotated[str | None, typer.Option(help="profile on a remote device over SSH, e.g. user@jetson (artifact copied there)")] = None,
    remote_edgekit: Annotated[str, typer.Option(help="the edgekit command on the remote host")] = "edgekit",
    port: Annotated[int | None, typer.Option(help="SSH port of --host")] = None,
    ssh_option: Annotated[
        list[str], typer.Option("--ssh-option", help="extra ssh -o option for --host, e.g. IdentityFile=~/.ssh/jetson (repeatable)")
    ] = [],  # noqa: B006
) -> None:
    """Latency (first-token, cold start), throughput and memory, measured with each artifact's own runtime.

    Writes JSON, a Markdown summary and PNG plots; with several artifacts, measures them in
    one interleaved run and reports ratios to the first.
    """
    from edgekit.deploy import profile as step
    from edgekit.deploy import report as schema
    from edgekit.deploy.remote import remote_profile
    from edgekit.deploy.render import comparison_table, latency_table

    def ints(text: str | None, what: str) -> list[int] | None:
        try:
            return [int(b) for b in text.split(",") if b.strip()] if text else None
        except ValueError as err:
            raise ConfigError(f"invalid {what} {text!r}", hint="write comma-separated integers, e.g. 1,4,16") from err

    try:
        opts = step.ProfileOptions(
            seq_len=seq_len,
            seq_lens=ints(seq_lens, "--seq-lens") or [],
            text_file=text_file,
            batches=ints(batches, "--batches"),
            seconds_per_point=seconds,
            min_runs=min_runs,
            max_runs=max_runs,
            warmup=warmup,
            cold_runs=cold_runs,
            threads=threads,
        )
    except ValueError as err:
        raise ConfigError(f"invalid profile option: {str(err).splitlines()[-1].strip()}", hint="see 'edgekit profile --help'") from err
    with console.status("profiling") as status:
        say = lambda m: status.update(f"profiling: {m}")  # noqa: E731
        if host:
            reports = [
                remote_profile(a, host, opts, port=port, edgekit=remote_edgekit, ssh_options=ssh_option, progress=say) for a in artifacts
            ]
        else:
            reports = step.profile_many(artifacts, opts, progress=say)
    comparison = (
        schema.Comparison(created=reports[0].created, reports=reports, ratios=schema.ratios(reports))
        if len(reports) > 1 or compare
        else None
    )
    console.print(latency_table(reports))
    if comparison:
        console.print(comparison_table(comparison))
    for r in reports:
        if r.memory.peak_rss_mb:
            console.print(f"{r.artifact.target}: peak RSS {r.memory.peak_rss_mb:.0f} MB ({r.memory.source})")
        for w in r.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}")
    folder = out or artifacts[0].resolve().parent / "reports"
    stem = "compare" if comparison else f"{reports[0].artifact.target}.profile"
    written = step.write_reports(reports, comparison, folder, stem, plots=plots)
    console.print("reports: " + ", ".join(str(p) for p in written))


@app.command(name="eval")
def eval_(
    artifact_dir: Annotated[Path, typer.Argument(help="artifact directory (from compile or export)")],
    data: Annotated[Path, typer.Option(help="JSONL/CSV: {text,label} for classifiers; {query,doc} pairs or {text} for embedding models")],
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    fidelity: Annotated[bool, typer.Option(help="also compare with the source PyTorch model (needs torch)")] = True,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="report path (default: ARTIFACT_DIR/../reports/<target>.eval.json)")
    ] = None,
) -> None:
    """Accuracy of the artifact itself on your data (and fidelity to the PyTorch model)."""
    from edgekit.deploy import artifact
    from edgekit.deploy.eval import evaluate

    with console.status("evaluating") as status:
        report = evaluate(artifact_dir, data, batch=batch, fidelity=fidelity, progress=lambda m: status.update(f"eval: {m}"))
    t = Table(title=f"{report.target} on {data.name} ({report.n} texts)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in report.metrics.items():
        t.add_row(k, f"{v:.4f}")
    console.print(t)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    path = json_out or artifact_dir.resolve().parent / "reports" / f"{report.target}.eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_json(path, report.model_dump())
    console.print(f"report: {path}")


@app.command(name="targets")
def targets_() -> None:
    """List compilation targets and whether each is usable here."""
    from edgekit.build.quickstart import usable_targets
    from edgekit.deploy.targets import TARGETS

    _, cannot_compile = usable_targets()
    t = Table(title="targets")
    for col in ("target", "runtime", "compiles here", "runs here", "description"):
        t.add_column(col, no_wrap=col == "target")
    for name, cls in TARGETS.items():
        if name in cannot_compile:
            compiles, runs = f"[red]no[/]: {escape(cannot_compile[name])}", "[red]no[/]"
        else:
            why = cls().runs_here()
            compiles, runs = "[green]yes[/]", "[green]yes[/]" if why is None else f"[yellow]no[/]: {escape(why)}"
        t.add_row(name, cls.runtime, compiles, runs, cls.description)
    console.print(t)


@app.command(name="devices")
def devices_() -> None:
    """List device profiles (devices/*.yaml) and whether each is usable here."""
    from edgekit.deploy import devices

    t = Table(title="device profiles")
    for col in ("device", "targets", "precisions", "usable here", "description"):
        t.add_column(col, no_wrap=col == "device")
    for name, p in devices.all_profiles().items():
        ok, why = devices.usable_here(p)
        t.add_row(
            name,
            ", ".join(p.targets),
            ", ".join(p.precisions),
            f"[green]yes[/] ({escape(why)})" if ok else f"[red]no[/]: {escape(why)}",
            p.description,
        )
    console.print(t)


@app.command()
def quickstart(
    model: ModelArg = None,
    out: Annotated[Path, typer.Option(help="output root")] = Path("dist/quickstart"),
    data: Annotated[Path | None, typer.Option(help="eval data (default: shipped real query/doc pairs)")] = None,
    seconds: Annotated[float, typer.Option(help="time budget per profiled point")] = 1.0,
) -> None:
    """The main job: export -> compile for every usable target -> eval -> profile -> summary."""
    from edgekit.build.quickstart import run
    from edgekit.deploy.profile import ProfileOptions

    summary = run(
        model or "default",
        out,
        eval_data=data,
        profile_options=ProfileOptions(seconds_per_point=seconds, min_runs=10, batches=[1, 8, 32], cold_runs=2),
        say=lambda m: console.print(f"[cyan]>[/] {m}"),
    )
    name = summary.name
    q = Table(title=f"{name}: quality of each artifact on {summary.eval_data}")
    for col in ("target", *summary.quality_metrics, "parity max|diff|", "size MB"):
        q.add_column(col, justify="left" if col == "target" else "right")
    for r in summary.rows:
        q.add_row(
            r.target, *(f"{r.eval.metrics[k]:.4f}" for k in summary.quality_metrics), f"{r.parity_max_abs_diff:.1e}", f"{r.size_mb:.1f}"
        )
    console.print(q)
    s = Table(title=f"{name}: speed on this machine (ms unless noted)")
    for col in ("target", "b1 s128 p50", "p90", "p99", "e2e p50", "best seq/s", "tok/s", "cold first"):
        s.add_column(col, justify="left" if col == "target" else "right")
    for r in summary.rows:
        ft, cold = r.profile.first_token, r.profile.cold_first_result
        best = next(p for p in r.profile.throughput if p.best)
        s.add_row(
            r.target,
            f"{ft.model_only.p50:.1f}",
            f"{ft.model_only.p90:.1f}",
            f"{ft.model_only.p99:.1f}",
            f"{ft.end_to_end.p50:.1f}",
            f"{best.seq_per_s:.1f} (b{best.batch})",
            f"{best.tokens_per_s:.0f}",
            f"{cold.total_ms:.0f}" if cold else "-",
        )
    console.print(s)
    for name, why in summary.skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {escape(why)}")
    console.print(f"artifacts and reports under {out}/ (summary.json, reports/*.json)")


exits_app = typer.Typer(no_args_is_help=True, help="Early exit: train exit heads, calibrate policies, export segments or a depth cut.")
app.add_typer(exits_app, name="exits")


@exits_app.command("train")
def exits_train(
    model: ModelArg = None,
    data: Annotated[Path, typer.Option(help="training texts: .txt, or JSONL/CSV with 'text' (+ optional 'label')")] = ...,
    out: Annotated[Path, typer.Option(help="exit-head directory to write")] = Path("build/exits"),
    layers: Annotated[str | None, typer.Option(help="layers with an exit, e.g. 2,4,6 (default: every layer)")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    freeze_backbone: Annotated[bool, typer.Option(help="train only the heads (the final exit keeps the original accuracy exactly)")] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT's last checkpoint if there is one")] = True,
) -> None:
    """Train exit heads by self-distillation from the model's own last layer (labels used when given)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgekit.build.exits import steps as build
    from edgekit.build.exits.train import TrainConfig

    layer_list = [int(x) for x in layers.split(",")] if layers else None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("exits", total=1, info="")

        def progress(stage: str, done: int, total: int, epoch: int = 0, epochs: int = 0, loss: float | None = None) -> None:
            label = "features" if stage == "features" else f"epoch {epoch}/{epochs}"
            bar.update(task, description=label, completed=done, total=total, info=f"loss {loss:.4f}" if loss is not None else "")

        report = build.train(
            model or "default",
            data,
            out,
            layers=layer_list,
            resume=resume,
            config=TrainConfig(epochs=epochs, lr=lr, freeze_backbone=freeze_backbone, device=device, seed=seed),
            progress=progress,
        )
    console.print(f"[green]trained[/] exit heads -> {out} (final loss {report['loss'][-1]:.4f} on {report['device']})")


@exits_app.command("calibrate")
def exits_calibrate(
    heads: Annotated[Path, typer.Argument(help="exit-head directory (from 'edgekit exits train')")],
    data: Annotated[Path, typer.Option(help="dev file: JSONL/CSV with 'text' and 'label' (or any text with --unsupervised)")],
    out: Annotated[Path | None, typer.Option(help="folder for calibration.json/.png (default: HEADS/calibration)")] = None,
    target: Annotated[str | None, typer.Option(help="measure segment latencies on this target (expected latency)")] = None,
    max_drop: Annotated[float, typer.Option(help="accuracy budget: at most this many points below the model without exits")] = 1.0,
    max_latency: Annotated[float | None, typer.Option(help="or: a latency target in ms (needs --target)")] = None,
    unsupervised: Annotated[bool, typer.Option(help="score agreement with the final exit instead of labels")] = False,
) -> None:
    """Sweep every policy on a dev file and choose the operating point that meets the budget."""
    from edgekit.build.exits import steps as build

    with console.status("calibrating"):
        r = build.calibrate(
            heads,
            data,
            out or heads / "calibration",
            target=target,
            max_drop=max_drop,
            max_latency_ms=max_latency,
            unsupervised=unsupervised,
        )
    c = r["chosen"]
    lat = f", expected {c['expected_latency_ms']:.2f} ms on {target}" if c["expected_latency_ms"] is not None else ""
    console.print(
        f"no exit: {100 * r['base']:.2f}%; chosen [bold]{c['policy']}={c['param']:g}[/]: {100 * c['quality']:.2f}%, {c['mean_layers']:.2f} layers{lat}"
    )
    console.print("curve: " + ", ".join(r["files"]))


@exits_app.command("export")
def exits_export(
    heads: Annotated[Path, typer.Argument(help="exit-head directory")],
    policy: Annotated[str, typer.Option(help="NAME=VALUE: entropy, patience, learned or similarity, e.g. entropy=0.3")],
    out: Annotated[Path, typer.Option(help="ONNX segments artifact to write")] = Path("build/exits-onnx"),
) -> None:
    """Export the early-exit model as one ONNX graph per segment (dynamic exit)."""
    from edgekit.build.exits import steps as build

    m = build.export(heads, policy, out)
    console.print(
        f"[green]exported[/] {len(m.exits.segments)} segments ({m.exits.policy}={m.exits.param:g}) -> {out}; exits match PyTorch on {m.settings.get('exit_parity', {}).get('rows', 32)} texts"
    )


@exits_app.command("compile")
def exits_compile(
    onnx_dir: Annotated[Path, typer.Argument(help="segments artifact (from 'edgekit exits export')")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="target (repeatable)")] = ["ort-cpu"],  # noqa: B006
    out: Annotated[Path, typer.Option(help="output root: writes OUT/<target>/")] = Path("dist/exits"),
) -> None:
    """Compile every segment for each target; checks that exits equal PyTorch's."""
    from edgekit.build.exits import steps as build

    for name in target:
        m = build.compile_exits(onnx_dir, name, out / name)
        p = m.settings["exit_parity"]
        console.print(
            f"[green]compiled[/] {name} -> {out / name}: {p['same_exit_layer']:.0%} of {p['rows']} rows exit where PyTorch does, max abs diff {p['max_abs_diff']:.1e}"
        )


@exits_app.command("prune")
def exits_prune(
    heads: Annotated[Path, typer.Argument(help="exit-head directory")],
    out: Annotated[Path, typer.Option(help="ONNX artifact to write (compile it like any export)")] = Path("build/pruned"),
    layer: Annotated[int | None, typer.Option(help="keep layers 1..LAYER and that exit's head")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="or: pick the shallowest exit within --max-drop from this calibration.json")
    ] = None,
    max_drop: Annotated[float, typer.Option(help="accuracy budget in points, with --calibration")] = 1.0,
) -> None:
    """Static early-exit pruning: a shorter model (what static-shape targets need)."""
    import json

    from edgekit.build.exits import steps as build

    if layer is None:
        if calibration is None:
            raise ConfigError("give --layer or --calibration", hint="e.g. --layer 4")
        layer = build.depth_for(json.loads(calibration.read_text()), max_drop)
    m = build.prune(heads, layer, out)
    console.print(f"[green]pruned[/] to {layer} layers -> {out}")
    console.print(_parity_line(m.parity))


@app.command()
def quantize(
    model: ModelArg = None,
    data: Annotated[Path, typer.Option(help="training texts: .txt, or JSONL/CSV with 'text' (+ optional 'label')")] = ...,
    scheme: Annotated[
        str, typer.Option(help="bit-w1a1, bit-w1a8, ternary-w2a8, bibert-w1a1, bitnet-w2a8, ... (an unknown name lists them)")
    ] = "bit-w1a1",
    out: Annotated[Path, typer.Option(help="quantized checkpoint directory to write ('edgekit export' accepts it)")] = Path(
        "build/quantized"
    ),
    eval_data: Annotated[Path | None, typer.Option("--eval", help="labeled dev file: accuracy of the teacher and of each stage")] = None,
    teacher: Annotated[str | None, typer.Option(help="teacher checkpoint (default: MODEL itself)")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps per stage (or --epochs)")] = None,
    epochs: Annotated[float | None, typer.Option(help="training epochs per stage (default 3)")] = None,
    multi_step: Annotated[bool, typer.Option(help="BiT multi-step: teacher -> --intermediate student -> the final student")] = False,
    intermediate: Annotated[str, typer.Option(help="the intermediate scheme of --multi-step")] = "bit-w1a8",
    batch_size: Annotated[int, typer.Option(help="batch size (per process under torchrun)")] = 32,
    lr: Annotated[float | None, typer.Option(help="learning rate (default by weight bits: 5e-4 for 1 bit, 1e-4 for 2)")] = None,
    max_length: Annotated[int, typer.Option(help="token limit per text")] = 128,
    ce: Annotated[float | None, typer.Option(help="weight of cross entropy with the labels (default: distillation only)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT/train_state if present")] = False,
    save_dtype: Annotated[str, typer.Option(help="float32 | float16 for the saved float weights")] = "float32",
) -> None:
    """Binarize or ternarize a trained checkpoint with distillation from the float model (QAT).

    The same entry point runs on several GPUs: torchrun --nproc_per_node=N -m edgekit.build.quant.train ...
    """
    from edgekit.build.quant import distill, make_config
    from edgekit.build.quant.train import TrainOptions, run

    dcfg = distill.DEFAULTS[make_config(scheme).method].model_copy(update={"ce": ce}) if ce else None
    try:
        opts = TrainOptions(
            model=model or "default",
            data=str(data),
            out=str(out),
            scheme=scheme,
            teacher=teacher,
            eval_data=str(eval_data) if eval_data else None,
            steps=steps,
            epochs=epochs,
            multi_step=multi_step,
            intermediate=intermediate,
            batch_size=batch_size,
            lr=lr,
            max_length=max_length,
            seed=seed,
            resume=resume,
            device=device,
            save_dtype=save_dtype,
            distill=dcfg,
        )
    except ValueError as err:
        raise ConfigError(f"invalid quantize option: {str(err).splitlines()[-1].strip()}", hint="see 'edgekit quantize --help'") from err
    report = run(opts)
    for stage in report["stages"]:
        acc = stage.get("eval", {}).get("accuracy")
        console.print(
            f"[green]{stage['scheme'] if 'scheme' in stage else scheme}[/]: {stage['steps']} steps, {stage['seconds']:.0f}s"
            + (f", dev accuracy {acc:.4f}" if acc is not None else "")
        )
    teacher_acc = report.get("teacher_eval", {}).get("accuracy")
    if teacher_acc is not None:
        console.print(f"teacher dev accuracy {teacher_acc:.4f}")
    console.print(f"quantized checkpoint -> {out} (report: {out / 'quant_report.json'}); next: edgekit export {out}")


report_app = typer.Typer(no_args_is_help=True, help="Profile reports: import trtexec / benchmark_app results, show several side by side.")
app.add_typer(report_app, name="report")


@report_app.command("import")
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


@report_app.command("schema")
def report_schema(
    out: Annotated[Path, typer.Option(help="where the JSON Schema goes")] = Path("docs/profile.schema.json"),
) -> None:
    """Write the JSON Schema of edgekit's profile report (versioned; docs/profile.schema.json in the repo)."""
    import json

    from edgekit.deploy import report as schema

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(schema.json_schema(), indent=2, sort_keys=True) + "\n")
    console.print(f"profile schema v{schema.SCHEMA_VERSION} -> {out}")


@report_app.command("show")
def report_show(
    files: Annotated[list[Path], typer.Argument(help="edgekit profile JSON files (measured or imported); ratios are to the first")],
    markdown: Annotated[Path | None, typer.Option(help="also write a Markdown summary here")] = None,
) -> None:
    """Show profile reports from any device side by side, with ratios to the first."""
    from edgekit.deploy import report as schema
    from edgekit.deploy.render import comparison_table, latency_table
    from edgekit.deploy.render import markdown as to_markdown

    reports = [schema.load(f) for f in files]
    comparison = schema.Comparison(created=reports[0].created, reports=reports, ratios=schema.ratios(reports)) if len(reports) > 1 else None
    console.print(latency_table(reports))
    if comparison:
        console.print(comparison_table(comparison))
    if markdown:
        markdown.write_text(to_markdown(reports, comparison))
        console.print(f"markdown -> {markdown}")


from edgekit.cli import build as cli_build  # noqa: E402 - their commands join the app here
from edgekit.cli import lowbit as cli_lowbit  # noqa: E402

cli_lowbit.register(app)
cli_build.register(app)


def main() -> None:
    """Console entry point: user errors are one line and exit code 2."""
    try:
        app()
    except EdgekitError as err:
        if _state["debug"] or env.debug():
            raise
        hint = f" (hint: {err.hint})" if err.hint else ""
        err_console.print(f"[red]error:[/] {escape(err.message)}{escape(hint)}", soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()

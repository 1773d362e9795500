"""``edgekit exits ...``: train exit heads, calibrate policies, export the exit artifact or a depth cut, compile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import console
from edgekit.cli.options import ModelArg, OptionOpt, TargetsOpt, ints, key_values, names

app = typer.Typer(no_args_is_help=True, help="Early exit: train exit heads, calibrate policies, export the exit artifact or a depth cut.")


@app.command("train")
def train(
    model: ModelArg = None,
    data: Annotated[Path, typer.Option(help="training texts: .txt, or JSONL/CSV with 'text' (+ optional 'label')")] = ...,
    out: Annotated[Path, typer.Option(help="exit-head directory to write")] = Path("build/exits"),
    layers: Annotated[str | None, typer.Option(help="layers with an exit, e.g. 2,4,6 (default: every layer)")] = None,
    head_pooling: Annotated[
        str | None,
        typer.Option(
            help="what each head reads: mean (of the tokens; the default for classifiers) or cls (the first token); embedding models: theirs"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    freeze_backbone: Annotated[
        bool,
        typer.Option(
            help="train only the heads (the final exit keeps the original accuracy exactly); --no-freeze-backbone: joint "
            "training, every exit distils the final layer, the final exit anchored to the original model"
        ),
    ] = True,
    backbone_lr: Annotated[float, typer.Option(help="learning rate of the backbone with --no-freeze-backbone")] = 2e-5,
    anchor_weight: Annotated[
        float, typer.Option(help="with --no-freeze-backbone: weight of the final exit's distillation from the original model")
    ] = 1.0,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="dev file: score every epoch, keep the one with the best early exits whose final exit stays within "
            "--final-tolerance points of the original model",
        ),
    ] = None,
    final_tolerance: Annotated[float, typer.Option(help="with --eval: points the final exit may lose on dev")] = 0.2,
    unlabeled: Annotated[
        Path | None,
        typer.Option(
            help="more texts without labels (.txt, one per line, or JSONL/CSV with 'text'): the heads distil the final "
            "layer on them too, no label loss"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT's last checkpoint if there is one")] = True,
) -> None:
    """Train exit heads by self-distillation from the model's own last layer (labels used when given)."""
    from edgekit.build.exits import steps
    from edgekit.build.exits.train import TrainConfig
    from edgekit.cli.views import training_progress
    from edgekit.errors import ConfigError

    for flag, value in (("--anchor-weight", anchor_weight), ("--final-tolerance", final_tolerance)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 (got {value})", hint=f"pass a non-negative {flag}")
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        freeze_backbone=freeze_backbone,
        backbone_lr=backbone_lr,
        anchor_weight=anchor_weight,
        final_tolerance=final_tolerance,
        device=device,
        seed=seed,
    )
    try:
        layer_list = [int(x) for x in names(layers)] if layers else None
    except ValueError:
        raise ConfigError(f"--layers {layers!r}: not a list of layer numbers", hint="give layers like 2,4,6") from None
    with training_progress("exits") as progress:
        report = steps.train(
            model or "default",
            data,
            out,
            layers=layer_list,
            head_pooling=head_pooling,
            resume=resume,
            config=config,
            progress=progress,
            dev_file=eval_data,
            unlabeled_file=unlabeled,
        )
    console.print(f"[green]trained[/] exit heads -> {out} (final loss {report['loss'][-1]:.4f} on {report['device']})")
    if "dev" in report:
        d = report["dev"]
        chosen = d["curve"][d["chosen_epoch"] - d["curve"][0]["epoch"]]["per_exit"]
        within = "within" if d["chosen_final_within"] else "NOT within"
        console.print(
            f"kept epoch {d['chosen_epoch']} by dev: exits {' '.join(f'{x:.1f}' for x in chosen)}; final exit {within} "
            f"{d['final_tolerance']} points of the original ({d['original_final']:.1f})"
        )


@app.command("calibrate")
def calibrate(
    heads: Annotated[Path, typer.Argument(help="exit-head directory (from 'edgekit exits train')")],
    data: Annotated[
        Path,
        typer.Option(
            help="dev file: JSONL/CSV with 'text' and 'label' (or any text with --unsupervised); for an embedding model, "
            "'query'/'doc' pairs are scored on recall@1 (every doc ranked for every query, both embedded as deployed)"
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="folder for calibration.json/.png (default: HEADS/calibration)")] = None,
    target: Annotated[str | None, typer.Option(help="measure segment latencies on this target (expected latency)")] = None,
    max_drop: Annotated[float, typer.Option(help="quality budget: at most this many points below the model without exits")] = 1.0,
    max_latency: Annotated[float | None, typer.Option(help="or: a latency target in ms (needs --target)")] = None,
    unsupervised: Annotated[bool, typer.Option(help="score agreement with the final exit instead of labels")] = False,
    estimate: Annotated[
        str,
        typer.Option(
            help="with --unsupervised: how a text whose exit disagrees with the final exit counts. agreement: as a whole "
            "point lost (safe, and it overstates the drop); expected: by the final exit's probabilities (its probability "
            "of its own class minus of the exit's class), the accuracy drop expected if those probabilities are "
            "calibrated (a classifier; scale them with --temperature-data)"
        ),
    ] = "agreement",
    temperature_data: Annotated[
        Path | None,
        typer.Option(help="with --estimate expected: a labelled dev file on which the final exit's temperature is fit first"),
    ] = None,
    confidence: Annotated[
        float, typer.Option(help="check --max-drop on this one-sided bootstrap bound of the dev drop (0: on the point estimate)")
    ] = 0.9,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples (seeded)")] = 1000,
    subsets: Annotated[int, typer.Option(help="also try keeping only up to this many exits besides the last (with --target; 0: off)")] = 3,
    per_exit: Annotated[bool, typer.Option(help="also tune one threshold per exit from each policy's best point")] = True,
    groups: Annotated[
        str | None,
        typer.Option(
            help="a field of the dev file naming each row's group (its source: product, document, customer): the bound "
            "resamples whole groups (cluster bootstrap), as it must when rows of one group are alike"
        ),
    ] = None,
    holdout: Annotated[
        float,
        typer.Option(
            help="share of the dev rows (whole groups with --groups) held out: points are searched on the rest and checked "
            "on these in a fixed order, so the chosen point's bound is not picked for being low by chance (0: search and "
            "bound on the same rows)"
        ),
    ] = 0.5,
    queries_only: Annotated[
        bool,
        typer.Option(
            help="with query/doc pairs: only the queries take exits; the docs are embedded once by the model without "
            "exits, as an index built offline is (recall@1 and latency are the queries')"
        ),
    ] = False,
    form: Annotated[
        str,
        typer.Option(
            help="graph: the exits decided inside one ONNX graph (one runtime call; a batch stops once every row has left); "
            "segments: one graph per segment, run by the controller (rows that leave are dropped from a batch); "
            "both: the graph for single inputs, the segments for batches (latency timed on the graph)"
        ),
    ] = "graph",
    option: Annotated[
        list[str],
        typer.Option(
            "--option",
            "-o",
            help="--target's option KEY=VALUE (repeatable) for the timed artifacts, e.g. data=dev.jsonl: openvino-cpu's sequence "
            "buckets (one-graph form); compile the exported point with the same options",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Sweep every policy on a dev file and choose the operating point that meets the budget."""
    from edgekit.build.exits import operating
    from edgekit.cli.views import stage_progress

    with stage_progress("calibrating") as progress:
        r = operating.calibrate(
            heads,
            data,
            out or heads / "calibration",
            target=target,
            max_drop=max_drop,
            max_latency_ms=max_latency,
            unsupervised=unsupervised,
            confidence=confidence or None,
            resamples=resamples,
            subsets=subsets,
            per_exit=per_exit,
            groups=groups,
            holdout=holdout,
            queries_only=queries_only,
            form=form,
            estimate=estimate,
            temperature_data=temperature_data,
            target_options=key_values(option) or None,
            progress=progress,
        )
    if r.temperature is not None:
        fit = f"fit on {r.temperature_data}" if r.temperature_data else "not fit: give --temperature-data to calibrate them"
        console.print(f"disagreements counted by the final exit's probabilities (temperature {r.temperature:.3g}, {fit})")
    single = f", single graph {r.single_graph_latency_ms:.2f} ms on {target}" if r.single_graph_latency_ms is not None else ""
    console.print(f"no exit: {r.metric} {100 * r.base_quality:.2f}%{single}")
    style = "bold" if r.recommendation == "exits" else "bold yellow"
    console.print(f"[{style}]{r.recommendation}[/]: {r.message}")
    if r.interval is not None:
        i, unit = r.interval, "query/doc pairs" if r.metric.startswith("recall@1") else "texts"
        console.print(
            f"dev drop {i.drop:.2f} points, {100 * i.confidence:g}% bound {i.drop_high:.2f} (quality {100 * i.quality:.2f}%, "
            f"bounds {100 * i.quality_low:.2f}..{100 * i.quality_high:.2f}%) on {i.dev_texts} {'held-out ' if i.search_texts else ''}{unit}"
            f"{f' in {i.dev_groups} groups ({groups})' if i.dev_groups is not None else ''}; "
            f"about {i.dev_texts_needed} {unit} would bring the bound's margin under {max_drop / 4:g} points"
        )
    if r.held_out_sequence:
        seq, last = r.held_out_sequence, r.held_out_sequence[-1]
        end = (
            f"ended at {last['point']} (held-out bound {last['held_out_drop_bound']:.2f} points)"
            if last["held_out_drop_bound"] > max_drop + 1e-9
            else "every point held"
        )
        console.print(f"held-out sequence: {len(seq)} points tried, {end} (calibration.json: held_out_sequence)")
    if r.exits is not None:
        console.print(f"exits kept: layers {', '.join(map(str, r.exits))} (export only these)")
    if r.length_plan is not None:
        on = [f"<={b}" for b, c in zip(r.length_plan["buckets"], r.length_plan["check"]) if c]
        console.print(f"exit checks at token lengths: {', '.join(on) or 'none (every length runs the single graph)'}")
    if r.deployed_check is not None and r.deployed_check["kept"]:
        d = r.deployed_check
        console.print(
            f"checked as deployed on {target}: {d['exit_ms']:.2f} ms against {d['single_ms']:.2f} for the single graph "
            f"({d['ratio']:.2f}x, {d['texts']} texts)"
        )
    if r.target_options:
        opts = " ".join(f"-o {k}={v}" for k, v in r.target_options.items())
        console.print(f"timed with {opts}: compile the exported point with the same ('edgekit exits compile EXPORT -t {target} {opts}')")
    console.print("curve: " + ", ".join(r.files))


@app.command("export")
def export(
    heads: Annotated[Path, typer.Argument(help="exit-head directory")],
    policy: Annotated[
        str,
        typer.Option(
            help="NAME=VALUE (entropy, margin, patience, learned or similarity, e.g. entropy=0.3) or NAME=V1,V2,... (one per exit before the last)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="ONNX early-exit artifact to write")] = Path("build/exits-onnx"),
    exits: Annotated[
        str | None,
        typer.Option(help="keep only the exits after these layers, e.g. 2,4 (the last layer's is always kept; default: the calibration's)"),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="calibration.json whose length plan and kept exits apply when it chose this policy (default: HEADS/calibration)"),
    ] = None,
    form: Annotated[
        str | None,
        typer.Option(
            help="graph: the exits decided inside one ONNX graph (one runtime call); segments: one graph per segment; "
            "both: the graph answers single inputs, the segments batches (default: the form the calibration timed, else graph)"
        ),
    ] = None,
) -> None:
    """Export the early-exit model for dynamic exit: one ONNX graph with the exits inside, or one per segment."""
    from edgekit.build.exits import steps
    from edgekit.deploy.exits.policies import policy_spec

    m = steps.export(heads, policy, out, calibration=calibration, exits=ints(exits, "--exits"), form=form)
    rows = m.settings.get("exit_parity", {}).get("rows", 32)
    shape = " and ".join(
        ([] if m.exits.graph is None else ["one graph"]) + ([f"{len(m.exits.segments)} segments"] if m.exits.segments else [])
    )
    console.print(
        f"[green]exported[/] {shape}, exits at layers {','.join(map(str, m.exits.layers))} "
        f"({policy_spec(m.exits.policy, m.exits.param)}) -> {out}; exits match PyTorch on {rows} texts"
    )


@app.command("compile")
def compile_(
    onnx_dir: Annotated[Path, typer.Argument(help="early-exit artifact (from 'edgekit exits export')")],
    target: TargetsOpt = ["ort-cpu"],  # noqa: B006
    out: Annotated[Path, typer.Option(help="output root: writes OUT/<target>/")] = Path("dist/exits"),
    option: OptionOpt = [],  # noqa: B006
) -> None:
    """Compile the exit graph (or every segment) and the single graph for each target; checks that exits equal PyTorch's.

    openvino-cpu takes sequence buckets for the one graph (-o data=dev.jsonl, or -o seq_lens=32,64,128): each input
    runs padded to the smallest compiled length that holds it, the single graph too."""
    from edgekit.build import plan, runner
    from edgekit.build.exits.model import EXITS_CONFIG
    from edgekit.cli.views import compiled
    from edgekit.deploy import artifact
    from edgekit.errors import ConfigError

    if (onnx_dir / EXITS_CONFIG).exists():
        raise ConfigError(
            f"{onnx_dir}: exit heads, not an exit export", hint=f"export them first: edgekit exits export {onnx_dir} --policy entropy=0.3"
        )
    if artifact.read_manifest(onnx_dir, verify=False).exits is None:  # also: no such directory, or not an artifact
        raise ConfigError(f"{onnx_dir}: not an early-exit export", hint="use 'edgekit compile' for plain artifacts")
    options = key_values(option)
    runner.run(plan.for_compile(str(onnx_dir), out, [(name, options) for name in target]), say=lambda m: None)
    for name in target:
        compiled(name, out / name, artifact.read_manifest(out / name))


@app.command("prune")
def prune(
    heads: Annotated[Path, typer.Argument(help="exit-head directory")],
    out: Annotated[Path, typer.Option(help="ONNX artifact to write (compile it like any export)")] = Path("build/pruned"),
    layer: Annotated[int | None, typer.Option(help="keep layers 1..LAYER and that exit's head")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="or: pick the shallowest exit within --max-drop from this calibration.json")
    ] = None,
    max_drop: Annotated[float, typer.Option(help="accuracy budget in points, with --calibration")] = 1.0,
) -> None:
    """Static early-exit pruning: a shorter model (what static-shape targets need)."""
    from edgekit.build.exits import steps
    from edgekit.cli.views import parity_line

    layer = steps.prune_layer(layer, calibration, max_drop)
    m = steps.prune(heads, layer, out)
    console.print(f"[green]pruned[/] to {layer} layers -> {out}")
    console.print(parity_line(m.parity))

"""Early exit calibrated on unlabelled deployment texts, then deployed and timed against the single graph.

The end-to-end companion of bench/exit_deploy_sample.py (which scores many splits on expected latency): one
seeded split of test.jsonl into an unlabelled deployment half and a labelled report half (the same split as
that script's seed), then, per target, what a user runs:

1. ``edgekit exits calibrate HEADS --unsupervised --data deployment.jsonl --target T`` (90 % bound on the
   disagreement with the final exit, segment and single-graph latency measured on T per length bucket);
2. ``edgekit exits export`` of the chosen point, compiled for T (the artifact ships the single graph too);
3. the report half through the exit artifact and through its single graph (the model without exits, exported,
   lowered and compiled the same way), batch 1, interleaved text by text, each text at its own length and
   padded to 128 tokens; a text's latency is its median over ``--rounds`` passes.

Accuracy is of the real-length runs; the drop is against the single graph on the same texts.

    python bench/exit_deploy_run.py HEADS --data bench/data/debian-sections [--seed 0] [--targets ort-cpu,openvino-cpu]
        [--json OUT.json] [--form graph|segments] [--sample UNLABELLED.txt]

``--sample``: calibrate on an unlabelled texts file instead (texts the heads never saw: bench/tools/split_corpus.py's
held-out part of the corpus, as ``UNLABELED_HOLDOUT`` in bench/device_exits.sh), and report on the whole test set.

``--dev DEV.jsonl``: calibrate on a labelled dev file (calibrate's default, supervised) and report on the whole test set.

``--estimate expected --temperature-data DEV.jsonl``: calibrate counting each disagreement by the final exit's
probabilities, temperature-scaled on the labelled dev file (calibrate's options of the same names).

``--form``: the exit artifact calibrated, exported and timed: ``graph`` (default; the exits decided inside one
ONNX graph, one runtime call) or ``segments`` (one graph per segment, run by the controller).

``--option TARGET:KEY=VALUE`` (repeatable): a target's compile options for calibration and the deployed artifact,
e.g. ``openvino-cpu:data=bench/data/debian-works-with/dev.jsonl`` (sequence buckets from dev's lengths). With
buckets, the artifact's single graph runs in them too, and the single graph compiled without them (dynamic shapes)
is timed beside both: the ratio is to the faster of the two single graphs. A bucketed session cuts an input
padded to 128 back to its real length, so with buckets only the real-length column is run (bench/exit_ov_buckets.py
times a point at a static [1, 128] against dynamic shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import cpu_model  # noqa: E402
from exit_deploy_sample import halves  # noqa: E402

from edgekit.build.exits import steps
from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import compile_exits
from edgekit.deploy import targets as tg
from edgekit.deploy.runtime import Predictor


def timed(runs: dict, feeds: list[dict], rounds: int) -> tuple[dict[str, float], dict[str, list]]:
    """Mean over texts of each text's median latency (ms), interleaved (who goes first alternates); round 0's outputs."""
    for f in feeds[:5]:  # warm-up
        for fn in runs.values():
            fn(f)
    ms = {n: np.zeros((rounds, len(feeds))) for n in runs}
    outs: dict[str, list] = {n: [] for n in runs}
    for r in range(rounds):
        for i, f in enumerate(feeds):
            for n in list(runs) if (i + r) % 2 == 0 else list(reversed(runs)):
                t = time.perf_counter()
                o = runs[n](f)
                ms[n][r, i] = (time.perf_counter() - t) * 1000
                if r == 0:
                    outs[n].append(o)
    return {n: float(np.median(v, axis=0).mean()) for n, v in ms.items()}, outs


def run_chosen(
    heads: Path, chosen, target: str, work: Path, texts: list[str], rounds: int, options: dict | None = None
) -> tuple[str, dict, dict]:
    """Export a calibration's chosen point (its calibration.json in ``work/calibration``), compile it for ``target``
    (with ``options``), then ``texts`` through the exit artifact and the single graph it ships, batch 1, interleaved
    (:func:`timed`), at their own lengths and (without sequence buckets) padded to 128 tokens. (policy spec, per shape: tokens, mean_ms, ratio,
    mean_layers; per shape: each run's outputs, one row per text)."""
    c = chosen
    spec = f"{c.policy}=" + ",".join(str(v) for v in (c.param if isinstance(c.param, list) else [c.param]))
    steps.export(heads, spec, work / "onnx", calibration=work / "calibration" / "calibration.json")
    spin = {"spinning": False} if target == "ort-cpu" else {}  # as compile_exits: idle segments' threads must not spin
    compile_exits(work / "onnx", target, work / "artifact", options=(spin | (options or {})) or None)
    bucketed = bool(options and (options.get("seq_lens") or options.get("data")))
    if bucketed:  # the single graph a user would otherwise ship may run faster without buckets: time it too
        compile_exits(work / "onnx", target, work / "artifact-dynamic", options=spin or None)
    shapes, outputs = {}, {}
    load = tg.resolve_options(target, spin or None)
    with (
        Predictor(work / "artifact", options=load) as p,
        Predictor(work / "artifact-dynamic", options=load) if bucketed else nullcontext() as dyn,
    ):
        ctl = p.exits
        single, name = ctl.single, ctl.output_name
        runs = {"single graph": lambda f, s=single, k=name: s.infer(f)[k], "early exit": p.run}
        if dyn is not None:
            runs["single graph (dynamic shapes)"] = lambda f, s=dyn.exits.single, k=name: s.infer(f)[k]
        for shape, pad in (("real length", None), ("s128", 128))[: 1 if bucketed else 2]:
            feeds = [p.tokenizer([t], pad_to=pad) if pad else p.tokenizer([t]) for t in texts]
            ctl.histogram[:] = 0
            mean, outs = timed(runs, feeds, rounds)
            hist = (ctl.histogram // rounds).tolist()
            base = min(v for k, v in mean.items() if k.startswith("single graph"))
            shapes[shape] = {
                "tokens": float(np.mean([f["attention_mask"].sum() for f in feeds])),
                "mean_ms": mean,
                "ratio": mean["early exit"] / base,
                "mean_layers": float(np.dot(hist, ctl.layers) / max(1, sum(hist))),
            }
            outputs[shape] = {n: np.concatenate(o) for n, o in outs.items()}
    return spec, shapes, outputs


def chosen_row(spec: str, c) -> dict:
    """The result row's record of a calibration's chosen point."""
    return {"chosen": spec, "exits": c.exits, "calibration_mean_layers": c.mean_layers, "expected_latency_ratio": c.latency_ratio}


def timing_line(target: str, shape: str, spec: str, exits, r: dict, quality: str) -> str:
    return (
        f"{target} b1 {shape}: {spec} exits {exits or 'all'}: early exit {r['mean_ms']['early exit']:.3f} ms vs single graph "
        f"{r['mean_ms']['single graph']:.3f} ms"
        + (
            f" (dynamic shapes {r['mean_ms']['single graph (dynamic shapes)']:.3f} ms)"
            if "single graph (dynamic shapes)" in r["mean_ms"]
            else ""
        )
        + f" ({r['ratio']:.3f}x the faster); {quality}; {r['mean_layers']:.2f} layers"
    )


def write_json(path: Path | None, doc: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", type=Path, help="exit-head directory (edgekit exits train)")
    ap.add_argument("--data", type=Path, default=Path("bench/data/debian-sections"), help="folder with test.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="the test split (as bench/exit_deploy_sample.py's seed)")
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("bench/work/exit_deploy_run"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--form", default="graph", help="the exit artifact: graph (exits inside one graph) or segments")
    ap.add_argument(
        "--sample",
        type=Path,
        help="an unlabelled texts file to calibrate on instead of test's deployment half; the whole test set is then reported",
    )
    ap.add_argument(
        "--dev",
        type=Path,
        help="a labelled dev file to calibrate on (supervised: accuracy, the default calibration) instead; the whole test set is then reported",
    )
    ap.add_argument("--estimate", default="agreement", help="calibrate's --estimate: agreement or expected")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        help="TARGET:KEY=VALUE, a target's compile option (repeatable), e.g. openvino-cpu:data=dev.jsonl",
    )
    ap.add_argument(
        "--temperature-data", type=Path, help="with --estimate expected: a labelled file to fit the temperature on (e.g. dev.jsonl)"
    )
    args = ap.parse_args()
    model = load_exits(args.heads)
    texts, labels = texts_and_labels(args.data / "test.jsonl", list(model.encoder.info.labels))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.sample and args.dev:
        ap.error("give --sample (unlabelled) or --dev (labelled), not both")
    if args.dev:  # the labelled dev set a user calibrates on by default: test is all report
        deploy, rep, sample = [], list(range(len(texts))), args.dev
    elif args.sample:  # e.g. texts held out from the heads' training (bench/tools/split_corpus.py): test is all report
        deploy, rep, sample = [], list(range(len(texts))), args.sample
    else:
        deploy, rep = halves(len(texts), args.seed)  # the split bench/exit_deploy_sample.py uses for this seed
        sample = args.work / f"deployment-seed{args.seed}.jsonl"
        sample.write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in deploy))  # texts only: no label leaves test's other half
    report_texts, y = [texts[i] for i in rep], np.asarray(labels)[rep]
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "heads": str(args.heads), "data": str(args.data), "seed": args.seed}
    doc["form"] = args.form
    doc |= {"estimate": args.estimate, "temperature_data": None if args.temperature_data is None else str(args.temperature_data)}
    given = args.dev or args.sample
    n_sample = len(deploy) if not given else sum(1 for line in given.read_text(encoding="utf-8").splitlines() if line.strip())
    doc |= {"deployment_texts": n_sample, "report_texts": len(rep), "max_drop": args.max_drop, "targets": {}}
    doc["sample"] = str(given) if given else f"test's deployment half (seed {args.seed})"
    doc["labelled_calibration"] = args.dev is not None
    print(f"CPU: {doc['cpu']} ({doc['cores']} cores); {n_sample} calibration texts ({doc['sample']}), {len(rep)} report texts", flush=True)
    options: dict[str, dict] = {}
    for item in args.option:
        target, _, kv = item.partition(":")
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--option {item!r}: write TARGET:KEY=VALUE")
        options.setdefault(target, {})[key] = value
    doc["options"] = options
    for target in [t for t in args.targets.split(",") if t]:
        work = args.work / target
        cal = steps.calibrate(
            args.heads,
            sample,
            work / "calibration",
            target=target,
            unsupervised=args.dev is None,
            max_drop=args.max_drop,
            form=args.form,
            estimate=args.estimate,
            temperature_data=args.temperature_data,
            target_options=options.get(target),
        )
        c = cal.chosen
        if c is None:
            doc["targets"][target] = {"recommendation": cal.recommendation, "message": cal.message}
            print(f"{target}: {cal.recommendation}: {cal.message}", flush=True)
            continue
        spec, shapes, outputs = run_chosen(args.heads, c, target, work, report_texts, args.rounds, options.get(target))
        row = chosen_row(spec, c) | {"temperature": cal.temperature}
        for shape, r in shapes.items():
            acc = {n: float(np.mean(o.argmax(-1) == y)) for n, o in outputs[shape].items()}
            row[shape] = r | {"accuracy": acc, "drop_points": 100 * (acc["single graph"] - acc["early exit"])}
            quality = f"accuracy {acc['early exit']:.4f} vs {acc['single graph']:.4f} (drop {row[shape]['drop_points']:.2f} pt)"
            print(timing_line(target, shape, spec, c.exits, r, quality), flush=True)
        doc["targets"][target] = row
    write_json(args.json, doc)


if __name__ == "__main__":
    main()

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
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    args = ap.parse_args()
    model = load_exits(args.heads)
    texts, labels = texts_and_labels(args.data / "test.jsonl", list(model.encoder.info.labels))
    deploy, rep = halves(len(texts), args.seed)  # the split bench/exit_deploy_sample.py uses for this seed
    args.work.mkdir(parents=True, exist_ok=True)
    sample = args.work / f"deployment-seed{args.seed}.jsonl"
    sample.write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in deploy))  # texts only: no label leaves test's other half
    report_texts, y = [texts[i] for i in rep], np.asarray(labels)[rep]
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "heads": str(args.heads), "data": str(args.data), "seed": args.seed}
    doc |= {"deployment_texts": len(deploy), "report_texts": len(rep), "max_drop": args.max_drop, "targets": {}}
    print(f"CPU: {doc['cpu']} ({doc['cores']} cores); {len(deploy)} deployment texts, {len(rep)} report texts", flush=True)
    for target in [t for t in args.targets.split(",") if t]:
        work = args.work / target
        cal = steps.calibrate(args.heads, sample, work / "calibration", target=target, unsupervised=True, max_drop=args.max_drop)
        c = cal.chosen
        if c is None:
            doc["targets"][target] = {"recommendation": cal.recommendation, "message": cal.message}
            print(f"{target}: {cal.recommendation}: {cal.message}", flush=True)
            continue
        spec = f"{c.policy}=" + ",".join(str(v) for v in (c.param if isinstance(c.param, list) else [c.param]))
        steps.export(args.heads, spec, work / "onnx", calibration=work / "calibration" / "calibration.json")
        spin = {"spinning": False} if target == "ort-cpu" else None  # as compile_exits: idle segments' threads must not spin
        compile_exits(work / "onnx", target, work / "artifact", options=spin)
        opts = tg.resolve_options(target, spin)
        row = {"chosen": spec, "exits": c.exits, "calibration_mean_layers": c.mean_layers, "expected_latency_ratio": c.latency_ratio}
        with Predictor(work / "artifact", options=opts) as p:
            ctl = p.exits
            single, name = ctl.single, ctl.output_name
            runs = {"single graph": lambda f, s=single, k=name: s.infer(f)[k], "early exit": p.run}
            for shape, pad in (("real length", None), ("s128", 128)):
                feeds = [p.tokenizer([t], pad_to=pad) if pad else p.tokenizer([t]) for t in report_texts]
                ctl.histogram[:] = 0
                mean, outs = timed(runs, feeds, args.rounds)
                acc = {n: float(np.mean(np.concatenate(o).argmax(-1) == y)) for n, o in outs.items()}
                hist = (ctl.histogram // args.rounds).tolist()
                row[shape] = {
                    "tokens": float(np.mean([f["attention_mask"].sum() for f in feeds])),
                    "mean_ms": mean,
                    "ratio": mean["early exit"] / mean["single graph"],
                    "accuracy": acc,
                    "drop_points": 100 * (acc["single graph"] - acc["early exit"]),
                    "mean_layers": float(np.dot(hist, ctl.layers) / max(1, sum(hist))),
                }
                print(
                    f"{target} b1 {shape}: {spec} exits {c.exits or 'all'}: early exit {mean['early exit']:.3f} ms vs single graph "
                    f"{mean['single graph']:.3f} ms ({row[shape]['ratio']:.3f}x), accuracy {acc['early exit']:.4f} vs "
                    f"{acc['single graph']:.4f} (drop {row[shape]['drop_points']:.2f} pt), {row[shape]['mean_layers']:.2f} layers",
                    flush=True,
                )
        doc["targets"][target] = row
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

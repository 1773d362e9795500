"""What early exit costs when it does not exit: the exit artifact vs the single graph, one process.

Default model (all-MiniLM-L6-v2, the model ``edgekit`` loads as "default") with exit heads after
every layer (reused from bench/work/early_exit_honest/heads, else trained there: 300 shuffled
debian-sections train texts, frozen backbone, 4 epochs; accuracy does not matter for overhead).
Per target (ort-cpu, openvino-cpu), FP32, batch 1, each test text at its own token length
("real") and padded to 128 tokens ("s128"), rounds interleaved text by text (the order of the
configurations alternates; a text's latency is its median over the rounds, the figure the mean
over texts), every figure a ratio to the single graph measured in the same run:

- single graph: the model without exits (``export_pruned`` at the last layer), compiled for the
  target (ORT with spinning off, as the exit artifacts);
- all 6 exits, never exits: an exit artifact whose policy never lets a row leave (learned=1.0),
  exits checked at every boundary: what six segment boundaries cost;
- exits 2,4 (+6), never exits: the same with three segments (``export_segments(layers=[2, 4])``);
- one graph, 6 exits / exits 2,4,6, never exits: the same two as ``--form graph`` artifacts (the exits
  decided inside one ONNX graph with If nodes, one runtime call: edgekit.build.exits.onegraph);
- checks off: the 6-exit artifact called with exit checks off (the length plan's short inputs, or
  a policy that can never exit): the controller runs the single graph it ships;
- calibrated: ``steps.calibrate`` on dev texts with the target's latency (unsupervised: agreement
  with the final exit; budget ``--max-drop``, 5 points by default since the quickly trained heads
  are weak and only the overhead is measured here), exported with its choice (policy, length
  plan, kept exits) by ``steps.export(calibration=report)``.

Run:  python bench/bench_exit_overhead.py                          # ~15 min on 2 busy CPU cores
      python bench/bench_exit_overhead.py --texts 40 --rounds 3 --targets ort-cpu --no-calibrate
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
from bench_early_exit import DATA, cpu_model, shuffled  # noqa: E402


def heads_dir(work: Path) -> Path:
    heads = Path("bench/work/early_exit_honest/heads")
    if (heads / "exits.json").exists():
        return heads
    from edgekit.build.exits import steps
    from edgekit.build.exits.train import TrainConfig

    heads = work / "heads"
    if not (heads / "exits.json").exists():
        train = work / "train-300.jsonl"
        train.parent.mkdir(parents=True, exist_ok=True)
        train.write_text("\n".join(shuffled(DATA / "train.jsonl", 300)) + "\n")
        print(f"training exit heads into {heads} (frozen backbone, 4 epochs) ...", flush=True)
        steps.train("default", train, heads, config=TrainConfig(epochs=4, device="cpu"), resume=False)
    return heads


def build(work: Path, heads: Path, targets: list[str], dev: int, calibrate: bool, max_drop: float) -> dict[str, dict[str, Path]]:
    from edgekit.build.compile import compile_artifact
    from edgekit.build.exits import steps
    from edgekit.build.exits.model import load_exits
    from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments
    from edgekit.deploy import artifact
    from edgekit.deploy.exits.policies import make

    model = load_exits(heads)
    never = make("learned", 1.0, model.task)
    sources = {"never-6": (None, "segments"), "never-2-4": ([2, 4], "segments"), "graph-6": (None, "graph"), "graph-2-4": ([2, 4], "graph")}
    for key, (layers, form) in sources.items():
        if not (work / key / "onnx" / "manifest.json").exists():
            export_segments(model, never, work / key / "onnx", layers=layers, form=form)
    if not (work / "single" / "onnx" / "manifest.json").exists():
        export_pruned(model, model.config.layers[-1], work / "single" / "onnx")
    arts: dict[str, dict[str, Path]] = {}
    for t in targets:
        arts[t] = {}
        opts = {"spinning": False} if t == "ort-cpu" else None
        single = work / "single" / t
        if not (single / "manifest.json").exists():
            compile_artifact(work / "single" / "onnx", artifact.read_manifest(work / "single" / "onnx"), t, single, options=opts)
        arts[t]["single"] = single
        for key in sources:
            if not (work / key / t / "manifest.json").exists():
                compile_exits(work / key / "onnx", t, work / key / t)
            arts[t][key] = work / key / t
        if calibrate:
            devfile = work / f"dev-{dev}.jsonl"
            devfile.write_text("\n".join(shuffled(DATA / "dev.jsonl", dev)) + "\n")
            rep = steps.calibrate(
                heads, devfile, work / f"calibration-{t}", target=t, unsupervised=True, max_drop=max_drop, latency_texts=40, rounds=2
            )
            print(f"{t} calibration: {rep.recommendation}: {rep.message}", flush=True)
            if rep.chosen is not None:
                policy = rep.chosen.spec
                steps.export(heads, policy, work / f"calibrated-{t}" / "onnx", calibration=rep)
                compile_exits(work / f"calibrated-{t}" / "onnx", t, work / f"calibrated-{t}" / t)
                arts[t]["calibrated"] = work / f"calibrated-{t}" / t
    return arts


def measure(arts: dict[str, Path], target: str, texts: list[str], rounds: int) -> dict:
    from edgekit.deploy import targets as tg
    from edgekit.deploy.runtime import Predictor

    opts = tg.resolve_options(target, {"spinning": False} if target == "ort-cpu" else None)
    preds = {k: Predictor(p, options=opts).__enter__() for k, p in arts.items()}
    try:
        ctl6 = preds["never-6"].exits
        runs = {
            "single graph": preds["single"].run,
            "all 6 exits, never exits": lambda f: ctl6.infer(f, check=True),
            "exits 2,4,6, never exits": lambda f: preds["never-2-4"].exits.infer(f, check=True),
            "checks off (shipped single graph)": lambda f: ctl6.infer(f, check=False),
            "one graph, 6 exits, never exits": lambda f: preds["graph-6"].exits.infer(f, check=True),
            "one graph, exits 2,4,6, never exits": lambda f: preds["graph-2-4"].exits.infer(f, check=True),
        }
        if "calibrated" in preds:
            runs["calibrated"] = preds["calibrated"].run
        tok = preds["single"].tokenizer
        res = {}
        for shape, feeds in (("real", [tok([t]) for t in texts]), ("s128", [tok([t], pad_to=128) for t in texts])):
            for f in feeds[:5]:  # warm-up
                for fn in runs.values():
                    fn(f)
            if "calibrated" in preds:
                preds["calibrated"].exits.histogram[:] = 0
                single_before = preds["calibrated"].exits.single_calls
            ms = {n: np.zeros((rounds, len(feeds))) for n in runs}
            for r in range(rounds):
                for i, f in enumerate(feeds):
                    for n in list(runs) if (i + r) % 2 == 0 else list(reversed(runs)):
                        t = time.perf_counter()
                        runs[n](f)
                        ms[n][r, i] = (time.perf_counter() - t) * 1000
            mean = {n: float(np.median(v, axis=0).mean()) for n, v in ms.items()}
            res[shape] = {
                "mean_tokens": float(np.mean([f["attention_mask"].sum() for f in feeds])),
                "sequence": float(np.mean([f["attention_mask"].shape[1] for f in feeds])),
                "mean_ms": mean,
                "ratio": {n: mean[n] / mean["single graph"] for n in runs},
            }
            if "calibrated" in preds:
                c = preds["calibrated"].exits
                res[shape]["calibrated"] = {
                    "exits": c.layers.tolist(),
                    "policy": f"{c.policy.name}={c.policy.param:g}",
                    "exit_histogram": (c.histogram // rounds).tolist(),
                    "single_graph_calls": (c.single_calls - single_before) // rounds,
                    "length_plan": c.length_plan.to_json() if c.length_plan else None,
                }
        return res
    finally:
        for p in preds.values():
            p.__exit__(None, None, None)


def label(shape: str, r: dict) -> str:
    return (
        f"b1 real length ({r['mean_tokens']:.0f} tokens)" if shape == "real" else f"b1 s128 ({r['mean_tokens']:.0f} tokens padded to 128)"
    )


def markdown(results: dict) -> str:
    names = None
    out = []
    for t, res in results["targets"].items():
        for shape, r in res.items():
            if names is None:
                names = list(r["ratio"])
                out.append("| target | shape | " + " | ".join(names) + " |")
                out.append("|---" * (len(names) + 2) + "|")
            cells = [f"{r['mean_ms'][n]:.2f} ms ({r['ratio'][n]:.3f}x)" if n in r["ratio"] else "-" for n in names]
            out.append(f"| {t} | {label(shape, r)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--texts", type=int, default=60, help="test texts (shuffled, seed 0)")
    ap.add_argument("--dev", type=int, default=200, help="dev texts for calibration (shuffled, seed 0)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument(
        "--max-drop", type=float, default=5.0, help="calibration budget (points of agreement with the final exit; the heads are weak)"
    )
    ap.add_argument("--work", type=Path, default=Path("bench/work/exit_overhead"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/early_exit_overhead"))
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    args.work.mkdir(parents=True, exist_ok=True)
    arts = build(args.work, heads_dir(args.work), targets, args.dev, not args.no_calibrate, args.max_drop)
    texts = [json.loads(line)["text"] for line in shuffled(DATA / "test.jsonl", args.texts)]
    load = os.getloadavg()[0]
    results: dict = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "texts": len(texts),
        "rounds": args.rounds,
        "max_drop": args.max_drop,
        "load_average_start": load,
        "targets": {},
    }
    print(f"CPU: {results['cpu']} ({results['cores']} cores, load {load:.1f}); {len(texts)} texts, {args.rounds} rounds", flush=True)
    for t in targets:
        results["targets"][t] = res = measure(arts[t], t, texts, args.rounds)
        for shape, r in res.items():
            print(f"{t} {label(shape, r)}: " + ", ".join(f"{n} {r['ratio'][n]:.3f}x" for n in r["ratio"]))
            if "calibrated" in r:
                print(f"  calibrated: {r['calibrated']}", flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "table.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"wrote {args.out / 'overhead.json'} and table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

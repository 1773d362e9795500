"""Early-exit benchmark: accuracy vs mean batch-1 latency, deployed, on the real task.

The fine-tuned MiniLM-L6 classifier (bench/finetune.py -> .ckpt/minilm-debian, six Debian
archive sections) with exit heads after every layer (``edgekit exits train``, backbone
frozen, so the last exit is the original model). For each target (ort-cpu, openvino-cpu):

1. calibrate every policy on the dev file with the exit artifact's latency measured on the target
   (``--form graph``, the default: the exits inside one graph; ``--form segments``),
   and take each policy's fastest operating point within ``--max-drop`` points of the
   model without exits (dev accuracy);
2. build the deployed artifacts: the model without exits (one graph, the baseline), one
   segmented early-exit artifact per policy at its operating point, and the static depth
   cut (early-exit pruning) at the shallowest layer whose own dev accuracy is within budget;
3. run the test file through all of them at batch 1, interleaved text by text (every
   artifact sees the same text back to back, so machine drift hits all alike), timing
   the model-only call; accuracy comes from the same runs.

Columns: test accuracy and its drop in points vs the no-exit model, mean layers run, mean
and p50 batch-1 latency over the real test texts (unpadded: each text at its own length),
and the latency ratio to the no-exit model measured in the same run.

The honest comparison (segment boundaries vs the single graph, length-aware calibration on the
default model) is ``python bench/bench_early_exit.py --boundaries``: see ``honest_main``.

Run:  python bench/bench_early_exit.py                 # ~10 min on 2 CPU cores
      python bench/bench_early_exit.py --limit 200     # quicker, fewer test texts
Needs: .ckpt/minilm-debian (python bench/finetune.py) and exit heads (trained here when
--heads does not exist: about 7 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.build import compile as compile_step
from edgekit.build import plan, runner
from edgekit.build.exits import steps as build
from edgekit.build.exits.calibrate import choose
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments
from edgekit.deploy import artifact, data
from edgekit.deploy.exits.policies import make
from edgekit.deploy.runtime import Predictor

DATA = Path("bench/data/debian-sections")


def main() -> int:
    if "--boundaries" in sys.argv:
        sys.argv.remove("--boundaries")
        return honest_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path(".ckpt/minilm-debian"))
    ap.add_argument("--heads", type=Path, default=Path(".ckpt/minilm-debian-exits"))
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in points (dev) for every operating point")
    ap.add_argument("--limit", type=int, help="use the first N test texts only")
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed passes over the test texts; a text's latency is its median over the passes"
    )
    ap.add_argument("--work", type=Path, default=Path("bench/work/early_exit"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/early_exit"))
    ap.add_argument("--form", default="graph", help="the exit artifacts: graph (exits inside one graph, the default) or segments")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        print(f"error: {args.model}: no fine-tuned checkpoint (run python bench/finetune.py first)", file=sys.stderr)
        return 2
    if not (args.heads / "exits.json").exists():
        print(f"training exit heads into {args.heads} (frozen backbone) ...")
        build.train(args.model, DATA / "train.jsonl", args.heads)

    model = load_exits(args.heads, args.model)
    labels = list(model.encoder.info.labels)
    test = data.read_labeled(DATA / "test.jsonl", labels)
    texts, y = test.texts[: args.limit], np.asarray(test.labels[: args.limit])
    targets = [t for t in args.targets.split(",") if t]
    results: dict = {
        "host": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "model": str(args.model),
        "heads": str(args.heads),
        "test_texts": len(texts),
        "max_drop": args.max_drop,
        "targets": {},
    }

    # The model without exits: one ordinary export (the trunk's graph), compiled per target.
    onnx_dir = args.work / "full" / "onnx"
    runner.run(plan.for_export(args.model, onnx_dir))  # what `edgekit export` runs
    onnx_manifest = artifact.read_manifest(onnx_dir)
    for target in targets:
        t0 = time.time()
        cal = build.calibrate(
            args.heads, DATA / "dev.jsonl", args.work / f"calibration-{target}", target=target, max_drop=args.max_drop, form=args.form
        )
        points = list(cal.points)
        arts: dict[str, tuple[Path, dict]] = {}
        full = args.work / "full" / target
        compile_step.compile_artifact(onnx_dir, onnx_manifest, target, full)
        arts["no exits"] = (full, {"policy": None})
        for policy in dict.fromkeys(p.policy for p in points):
            chosen = choose(cal["base"], [p for p in points if p.policy == policy], max_drop=args.max_drop)
            kept = f"@{'-'.join(map(str, chosen.exits))}" if chosen.exits is not None else ""
            seg = args.work / args.form / (chosen.spec.replace("=", "-").replace(",", "_") + kept)  # a per-exit point's param is a list
            if not (seg / "onnx" / "manifest.json").exists():
                export_segments(model, make(policy, chosen.param, model.task), seg / "onnx", layers=chosen.exits, form=args.form)
            compile_exits(seg / "onnx", target, seg / target)
            arts[chosen.spec + kept] = (
                seg / target,
                {
                    "policy": policy,
                    "param": chosen.param,
                    "exits": chosen.exits,
                    "dev_accuracy": chosen.quality,
                    "dev_mean_layers": chosen.mean_layers,
                    "expected_latency_ms": chosen.expected_latency_ms,
                },
            )
        depth = build.depth_for(cal, args.max_drop)
        cut = args.work / f"pruned-{depth}"
        if not (cut / "onnx" / "manifest.json").exists():
            export_pruned(model, depth, cut / "onnx")
        cut_manifest = artifact.read_manifest(cut / "onnx")
        compile_step.compile_artifact(cut / "onnx", cut_manifest, target, cut / target)
        arts[f"pruned to {depth} layers"] = (cut / target, {"policy": "depth cut", "layers": depth})
        print(
            f"{target}: built {len(arts)} artifacts in {time.time() - t0:.0f}s; dev base {cal['base']:.4f}, per-exit dev accuracy "
            + " ".join(f"{q:.3f}" for q in cal["per_exit_quality"])
            + f"; segment ms {[round(x, 2) for x in cal['segment_latency_ms']]}"
        )
        results["targets"][target] = {
            "calibration": {k: cal[k] for k in ("base", "chosen", "segment_latency_ms", "per_exit_quality", "layers")},
            "rows": measure(arts, texts, y, model.config.layers, args.rounds),
        }
        print_table(target, results["targets"][target]["rows"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_exit.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "early_exit.md").write_text(markdown(results) + "\n")
    print(f"wrote {args.out / 'early_exit.json'} and early_exit.md")
    return 0


def measure(arts: dict[str, tuple[Path, dict]], texts: list[str], y: np.ndarray, layers, rounds: int) -> list[dict]:
    # Many ORT sessions live in one process here (six per early-exit artifact); with ORT's
    # default spinning, idle sessions' threads busy-wait and steal the 2 cores from the one
    # running. Spinning is turned off for every ORT artifact alike (the baseline included).
    opts = None
    if Predictor(next(iter(arts.values()))[0]).manifest.target == "ort-cpu":
        from edgekit.deploy.targets.ort import OrtOptions

        opts = OrtOptions(spinning=False)
    preds = {name: Predictor(path, options=opts).__enter__() for name, (path, _) in arts.items()}
    try:
        feeds = {name: [p.tokenizer([t]) for t in texts] for name, p in preds.items()}
        for name, p in preds.items():  # warm-up
            for f in feeds[name][:10]:
                p.run(f)
            if p.exits is not None:
                p.exits.histogram[:] = 0
        runs = {name: np.zeros((rounds, len(texts))) for name in preds}
        out = {name: [] for name in preds}
        for r in range(rounds):
            for i in range(len(texts)):
                order = list(preds) if (i + r) % 2 == 0 else list(reversed(preds))  # alternate who goes first
                for name in order:
                    t = time.perf_counter()
                    o = preds[name].run(feeds[name][i])
                    runs[name][r, i] = (time.perf_counter() - t) * 1000
                    if r == 0:
                        out[name].append(o[0])
        # A text's latency is its median over the passes (robust to a stray spike on a busy
        # machine); the mean over texts is what a stream of real requests costs.
        ms = {name: np.median(v, axis=0).tolist() for name, v in runs.items()}
        hist_rounds = rounds
        base_acc = float(np.mean(np.argmax(out["no exits"], -1) == y))
        base_mean = statistics.fmean(ms["no exits"])
        rows = []
        for name, p in preds.items():
            acc = float(np.mean(np.argmax(out[name], -1) == y))
            hist = (p.exits.histogram // hist_rounds).tolist() if p.exits is not None else None
            if hist is not None:
                mean_layers = float(np.dot(hist, p.exits.layers) / max(1, sum(hist)))
            else:
                mean_layers = float(arts[name][1].get("layers") or layers[-1])
            mean = statistics.fmean(ms[name])
            rows.append(
                {
                    "artifact": name,
                    **arts[name][1],
                    "test_accuracy": acc,
                    "drop_points": (base_acc - acc) * 100,
                    "mean_layers": mean_layers,
                    "exit_histogram": hist,
                    "mean_ms": mean,
                    "p50_ms": statistics.median(ms[name]),
                    "p90_ms": float(np.percentile(ms[name], 90)),
                    "latency_ratio": mean / base_mean,
                    "speedup": base_mean / mean,
                }
            )
        return rows
    finally:
        for p in preds.values():
            p.__exit__(None, None, None)


def print_table(target: str, rows: list[dict]) -> None:
    from rich.table import Table

    t = Table(title=f"early exit on {target}: batch 1, real test texts, interleaved")
    for col in ("artifact", "test acc", "drop (pt)", "mean layers", "mean ms", "expected ms", "p50 ms", "x no-exit"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["artifact"],
            f"{r['test_accuracy']:.4f}",
            f"{r['drop_points']:+.2f}",
            f"{r['mean_layers']:.2f}",
            f"{r['mean_ms']:.2f}",
            _ms(r.get("expected_latency_ms")),
            f"{r['p50_ms']:.2f}",
            f"{r['speedup']:.2f}x",
        )


def _ms(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def markdown(results: dict) -> str:
    lines = [
        f"# Early exit, deployed: {results['model']} on {results['test_texts']} test texts (budget {results['max_drop']} pt on dev)",
        "",
    ]
    for target, res in results["targets"].items():
        cal = res["calibration"]
        lines += [
            f"## {target}",
            "",
            f"Segment latencies (ms, batch 1, dev texts): {', '.join(f'{x:.2f}' for x in cal['segment_latency_ms'])}; "
            f"per-exit dev accuracy: {', '.join(f'{q:.3f}' for q in cal['per_exit_quality'])}.",
            "",
            "Expected ms: the calibration's prediction (dev exit distribution x measured segment latencies, taken before this run).",
            "",
            "| artifact | test acc | drop (pt) | mean layers | mean ms | expected ms | p50 ms | speed-up vs no exits |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['artifact']} | {r['test_accuracy']:.4f} | {r['drop_points']:+.2f} | {r['mean_layers']:.2f} | "
                f"{r['mean_ms']:.2f} | {_ms(r.get('expected_latency_ms'))} | {r['p50_ms']:.2f} | {r['speedup']:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


# -- the honest comparison (--boundaries) ------------------------------------------------

HONEST = """Honest early-exit benchmark: the exit artifact vs the single graph of the same model.

Real model (the default all-MiniLM-L6-v2) with exit heads after every layer, trained by
``edgekit.build.exits.steps.train`` on 300 shuffled texts of bench/data/debian-sections/train.jsonl
(frozen backbone, 4 epochs; cached under bench/work/early_exit_honest/heads). Per target
(ort-cpu, openvino-cpu), in one process, rounds interleaved text by text (alternating who goes
first; a text's latency is its median over the rounds):

1. boundaries: an exit artifact whose policy never exits (learned=1.0: every row runs all six
   segments, exits checked; and with checks off, where the controller runs the single graph the
   artifact ships) vs the single graph, batch 1, each test text at its own token length and
   padded to 128 tokens: the ratio is what segment boundaries cost (bench/bench_exit_overhead.py
   adds a subset of exits and the calibrated choice);
2. calibration: ``steps.calibrate`` with the target on dev texts: per-length-bucket latencies,
   every point's expected latency against the single graph's, the length plan and the
   recommendation (calibration.json/png copied to the results).

Run:  python bench/bench_early_exit.py --boundaries                # ~10 min on 2 CPU cores
      python bench/bench_early_exit.py --boundaries --texts 50 --rounds 3 --targets ort-cpu
"""


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def shuffled(path: Path, n: int, seed: int = 0) -> list[str]:
    lines = path.read_text().splitlines()
    random.Random(seed).shuffle(lines)
    return lines[:n]


def build_honest(work: Path, targets: list[str]) -> dict[str, dict[str, Path]]:
    from edgekit.build.compile import compile_artifact
    from edgekit.build.exits import steps
    from edgekit.build.exits.model import load_exits
    from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments
    from edgekit.build.exits.train import TrainConfig
    from edgekit.deploy import artifact
    from edgekit.deploy.exits.policies import make

    heads = work / "heads"
    if not (heads / "exits.json").exists():
        train = work / "train-300.jsonl"
        train.write_text("\n".join(shuffled(DATA / "train.jsonl", 300)) + "\n")
        print(f"training exit heads into {heads} (frozen backbone, 4 epochs) ...", flush=True)
        steps.train("default", train, heads, config=TrainConfig(epochs=4, device="cpu"), resume=False)
    model = load_exits(heads)
    if not (work / "never" / "onnx" / "manifest.json").exists():
        export_segments(model, make("learned", 1.0, model.task), work / "never" / "onnx")
    if not (work / "single" / "onnx" / "manifest.json").exists():
        export_pruned(model, model.config.layers[-1], work / "single" / "onnx")
    arts = {}
    for t in targets:
        opts = {"spinning": False} if t == "ort-cpu" else None
        if not (work / "never" / t / "manifest.json").exists():
            compile_exits(work / "never" / "onnx", t, work / "never" / t)
        if not (work / "single" / t / "manifest.json").exists():
            compile_artifact(
                work / "single" / "onnx", artifact.read_manifest(work / "single" / "onnx"), t, work / "single" / t, options=opts
            )
        arts[t] = {"single": work / "single" / t, "never": work / "never" / t}
    return arts


def boundaries(arts: dict[str, Path], target: str, texts: list[str], rounds: int) -> dict:
    from edgekit.deploy import targets as tg
    from edgekit.deploy.runtime import Predictor

    opts = tg.resolve_options(target, {"spinning": False} if target == "ort-cpu" else None)
    with Predictor(arts["single"], options=opts) as one, Predictor(arts["never"], options=opts) as ex:
        ctl = ex.exits
        runs = {
            "single graph": one.run,
            "exits checked": lambda f: ctl.infer(f, check=True),
            "no exit checks": lambda f: ctl.infer(f, check=False),
        }
        res = {}
        for shape, feeds in (
            ("real length", [one.tokenizer([t]) for t in texts]),
            ("s128", [one.tokenizer([t], pad_to=128) for t in texts]),
        ):
            for f in feeds[:5]:
                for fn in runs.values():
                    fn(f)
            ms = {n: np.zeros((rounds, len(feeds))) for n in runs}
            for r in range(rounds):
                for i, f in enumerate(feeds):
                    order = list(runs) if (i + r) % 2 == 0 else list(reversed(runs))
                    for n in order:
                        t = time.perf_counter()
                        runs[n](f)
                        ms[n][r, i] = (time.perf_counter() - t) * 1000
            mean = {n: float(np.median(v, axis=0).mean()) for n, v in ms.items()}
            res[shape] = {
                "mean_tokens": float(np.mean([f["attention_mask"].sum() for f in feeds])),
                "mean_ms": mean,
                "ratio_to_single_graph": {n: mean[n] / mean["single graph"] for n in runs},
                "linked": ctl.linked,
            }
    return res


def honest_main() -> int:
    ap = argparse.ArgumentParser(description=HONEST, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--texts", type=int, default=100, help="test texts (shuffled, seed 0)")
    ap.add_argument("--dev", type=int, default=200, help="dev texts for calibration (shuffled, seed 0)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("bench/work/early_exit_honest"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/early_exit_honest"))
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    args.work.mkdir(parents=True, exist_ok=True)
    arts = build_honest(args.work, targets)
    texts = [json.loads(line)["text"] for line in shuffled(DATA / "test.jsonl", args.texts)]
    results: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "texts": len(texts), "rounds": args.rounds, "targets": {}}
    print(f"CPU: {results['cpu']} ({results['cores']} cores); {len(texts)} test texts, {args.rounds} interleaved rounds", flush=True)
    for t in targets:
        res = boundaries(arts[t], t, texts, args.rounds)
        results["targets"][t] = {"boundaries": res}
        for shape, r in res.items():
            print(
                f"{t} b1 {shape} ({r['mean_tokens']:.0f} tokens): "
                + ", ".join(f"{n} {r['mean_ms'][n]:.2f} ms ({r['ratio_to_single_graph'][n]:.3f}x)" for n in r["mean_ms"]),
                flush=True,
            )
    if not args.no_calibrate:
        from edgekit.build.exits import steps

        dev = args.work / f"dev-{args.dev}.jsonl"
        dev.write_text("\n".join(shuffled(DATA / "dev.jsonl", args.dev)) + "\n")
        for t in targets:
            rep = steps.calibrate(args.work / "heads", dev, args.work / f"calibration-{t}", target=t, unsupervised=True)
            dest = args.out / f"calibration-{t}"
            dest.mkdir(parents=True, exist_ok=True)
            for f in rep.files:
                shutil.copy2(f, dest / Path(f).name)
            results["targets"][t]["calibration"] = {
                "single_graph_latency_ms": rep.single_graph_latency_ms,
                "recommendation": rep.recommendation,
                "message": rep.message,
                "length_plan": rep.length_plan,
                "length_buckets": [b.model_dump() for b in rep.length_buckets or []],
            }
            print(f"{t} calibration: {rep.recommendation}: {rep.message}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "boundaries.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'boundaries.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

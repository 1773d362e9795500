"""QAT speed, old settings against new, at the same seed: samples/s, steps/s, GPU use, dev/test accuracy.

Old settings are those `edgekit quantize` had before the speed work, reproduced through
TrainOptions (batch 32, fp32, every batch padded to 128, no length buckets); new ones use
bf16 autocast, length-bucketed batches cut to their longest text, a larger batch with a
sqrt-scaled learning rate. ``--baseline-code DIR`` also times the previous code itself
(DIR holds its ``edgekit`` package), for a speed figure only (a short, fixed step budget).

    python bench/finetune.py --model MINILM --out work/teacher --epochs 4
    python bench/quant_speed.py --teacher work/teacher --work work/qs --out RESULTS [--runs a,b] [--baseline-code .base]

Each run is a child process (one failing run does not stop the others). RESULTS gets
summary.json, summary.md and reports.json (every run's quant_report.json, by run name).
Data: bench/data/debian-sections (6 classes); ``train24k`` repeats its 5.6k training texts to 24k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "debian-sections"
OLD = {"batch_size": 32, "precision": "fp32", "padding": "max_length", "length_buckets": 1}
NEW = {"batch_size": 64, "precision": "auto", "padding": "longest", "length_buckets": 64, "lr_scaling": "sqrt"}
NEW128 = {**NEW, "batch_size": 128}
NEW256 = {**NEW, "batch_size": 256}
TERNARY = {"scheme": "ternary-w2a8"}
BIT = {"scheme": "bit-w1a1", "multi_step": True}
RUNS: dict[str, dict] = {
    # name: options (+ "data": train | train24k, "code": current | baseline, "steps" for timing-only runs)
    "ternary-old": {**TERNARY, **OLD},
    "ternary-new": {**TERNARY, **NEW},
    "ternary-new128": {**TERNARY, **NEW128},
    "bit-old": {**BIT, **OLD},
    "bit-new": {**BIT, **NEW},
    "bit-new128": {**BIT, **NEW128},
    "bit-new128-e6": {**BIT, **NEW128, "epochs": 6.0},
    "bit-new-24k": {**BIT, **NEW, "data": "train24k"},
    "bit-new128-24k": {**BIT, **NEW128, "data": "train24k"},
    "ternary-baseline-code": {**TERNARY, "batch_size": 32, "code": "baseline", "steps": 150},
    "bit-baseline-code": {**BIT, "batch_size": 32, "code": "baseline", "steps": 150},
    # one setting, this tree's code against the previous code (--baseline-code): the step's own speed
    "ternary-new128-steps": {**TERNARY, **NEW128, "steps": 150},
    "ternary-new128-prev": {**TERNARY, **NEW128, "code": "baseline", "steps": 150},
    "bit-new128-steps": {**BIT, **NEW128, "steps": 150},
    "bit-new128-prev": {**BIT, **NEW128, "code": "baseline", "steps": 150},
    # twice the batch: fewer steps an epoch, so more epochs for the same accuracy
    "ternary-new256-e6": {**TERNARY, **NEW256, "epochs": 6.0},
    "bit-new256-e12": {**BIT, **NEW256, "epochs": 12.0},
}


def _train_file(kind: str, work: Path, texts: int) -> Path:
    if kind == "train":
        return DATA / "train.jsonl"
    lines = [line for line in (DATA / "train.jsonl").read_text().splitlines() if line.strip()]
    path = work / f"train{texts // 1000}k.jsonl"
    path.write_text("\n".join(lines[i % len(lines)] for i in range(texts)) + "\n")
    return path


def one(name: str, teacher: str, work: Path, texts: int, seed: int, smoke: int | None = None) -> dict:
    """Train run ``name`` in this process; returns its report and test accuracy."""
    import torch

    from edgekit.build.load import load
    from edgekit.build.quant.textdata import evaluate
    from edgekit.build.quant.train import TrainOptions, run
    from edgekit.deploy import data as datafiles

    spec = dict(RUNS[name])
    data = _train_file(spec.pop("data", "train"), work, texts)
    baseline = spec.pop("code", "current") == "baseline"
    out = work / name
    opts = dict(model=teacher, data=str(data), out=str(out), eval_data=str(DATA / "dev.jsonl"), seed=seed, progress=False, log_every=100)
    opts.update(spec)
    if smoke:  # a few steps on a few texts: checks the script, measures nothing
        opts.update(steps=smoke, limit=smoke * 4, save_every=max(smoke, 1))
    report = run(TrainOptions(**opts))
    enc = load(out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test = datafiles.read_labeled(DATA / "test.jsonl", list(enc.info.labels))
    test_acc = evaluate(enc, enc.module.to(device), test.texts, test.labels, device).accuracy
    return {"report": report.model_dump(mode="json"), "test_accuracy": test_acc, "baseline_code": baseline}


def _row(name: str, res: dict) -> dict:
    rep = res["report"]
    stages = rep["stages"]
    secs = sum(s["seconds"] for s in stages)
    steps = sum(s["steps"] - s["start_step"] for s in stages)
    samples = sum(
        s["speed"]["samples_per_s"] * s["speed"]["train_seconds"] if s.get("speed") else (s["steps"] - s["start_step"]) * s["batch_size"]
        for s in stages
    )
    speeds = [s.get("speed") or {} for s in stages]
    last = stages[-1]
    return {
        "run": name,
        "texts": rep["texts"],
        "stages": [s["scheme"] for s in stages],
        "batch": last["batch_size"],
        "precision": speeds[-1].get("precision", "fp32"),
        "steps": steps,
        "train_seconds": round(secs, 1),
        "samples_per_s": round(samples / secs, 1) if secs else None,
        "steps_per_s": round(steps / secs, 2) if secs else None,
        "gpu_util_mean": [sp.get("gpu_util_mean") for sp in speeds],
        "gpu_memory_gb": [sp.get("gpu_memory_gb") for sp in speeds],
        "real_token_share": [sp.get("real_token_share") for sp in speeds],
        "dev_accuracy": (last.get("eval") or {}).get("accuracy"),
        "best_dev_step": [(s.get("dev_curve") or {}).get("best_step") for s in stages],
        "test_accuracy": res["test_accuracy"],
        "teacher_dev_accuracy": (rep.get("teacher_eval") or {}).get("accuracy"),
        "wall_seconds": res.get("wall_seconds"),
    }


def _markdown(rows: list[dict], command: str) -> str:
    base = {r["run"].split("-")[0]: r["samples_per_s"] for r in rows if r["run"].endswith("-old")}
    lines = [
        "# QAT speed: old settings vs new (MiniLM-L6 classifier, debian-sections, one H200)",
        "",
        f"Rerun: `{command}`",
        "",
        "| run | texts | batch | prec | steps | train s | samples/s | x old | steps/s | GPU util % | dev acc | test acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ref = base.get(r["run"].split("-")[0])
        x = f"{r['samples_per_s'] / ref:.1f}" if ref and r["samples_per_s"] else "-"
        util = "/".join("-" if u is None else f"{u:.0f}" for u in r["gpu_util_mean"])
        dev = "-" if r["dev_accuracy"] is None else f"{r['dev_accuracy']:.4f}"
        lines.append(
            f"| {r['run']} | {r['texts']} | {r['batch']} | {r['precision']} | {r['steps']} | {r['train_seconds']} | "
            f"{r['samples_per_s']} | {x} | {r['steps_per_s']} | {util} | {dev} | {r['test_accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="fine-tuned float classifier (bench/finetune.py)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", default="ternary-new,bit-new,ternary-old,bit-old")
    ap.add_argument("--texts", type=int, default=24000, help="size of the train24k set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=400, help="seconds per run")
    ap.add_argument("--baseline-code", type=Path, help="folder holding the previous edgekit package")
    ap.add_argument("--smoke", type=int, help="only this many steps per stage (a check of the script)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        res = one(args.one, args.teacher, args.work, args.texts, args.seed, args.smoke)
        (args.work / f"{args.one}.result.json").write_text(json.dumps(res))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results, rows = {}, []
    for name in args.runs.split(","):
        if name not in RUNS:
            sys.exit(f"unknown run {name!r}; runs: {', '.join(RUNS)}")
        env = dict(os.environ)
        if RUNS[name].get("code") == "baseline":
            if args.baseline_code is None:
                print(f"{name}: skipped (no --baseline-code)", flush=True)
                continue
            env["PYTHONPATH"] = os.pathsep.join([str(args.baseline_code.resolve()), env.get("PYTHONPATH", "")])
        t0 = time.time()
        cmd = [sys.executable, __file__, "--one", name, "--teacher", args.teacher, "--work", str(args.work), "--out", str(args.out)]
        cmd += ["--texts", str(args.texts), "--seed", str(args.seed)] + (["--smoke", str(args.smoke)] if args.smoke else [])
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out after {args.timeout:.0f}s", flush=True)
            continue
        path = args.work / f"{name}.result.json"
        if proc.returncode != 0 or not path.exists():
            print(f"{name}: failed (exit {proc.returncode})", flush=True)
            continue
        res = json.loads(path.read_text())
        res["wall_seconds"] = round(time.time() - t0, 1)
        results[name] = res
        rows.append(_row(name, res))
        print(json.dumps(rows[-1]), flush=True)
        command = "python bench/quant_speed.py " + " ".join(sys.argv[1:])
        (args.out / "summary.json").write_text(json.dumps({"command": command, "runs": rows}, indent=1))
        (args.out / "summary.md").write_text(_markdown(rows, command))
        (args.out / "reports.json").write_text(json.dumps({k: v["report"] for k, v in results.items()}))


if __name__ == "__main__":
    main()

"""Low-bit encoders on a real task: FP32 vs W2A8 (ternary) vs W1A8 -> W1A1 (BiT multi-step) [vs BiBERT W1A1].

Starts from the fine-tuned MiniLM-L6 classifier of bench/finetune.py (Debian package
descriptions -> 6 sections, bench/data/debian-sections) and, in one process:

1. FP32 dev/test accuracy;
2. ternary-w2a8 (TernaryBERT-style TWN weights, 8-bit LSQ activations), distilled from FP32;
3. BiT multi-step: bit-w1a8 distilled from FP32, then bit-w1a1 distilled from (and initialised by) it;
4. bibert-w1a1 distilled from FP32 (skip with --no-bibert).

Every accuracy is measured on the saved checkpoint reloaded with edgekit.build.load (the thing
`edgekit export` exports), not on the in-memory training module.

    python bench/quant_bench.py [--model .ckpt/minilm-debian] --out bench/results/quant      # CUDA GPU, < 8 min on one H100
    python bench/quant_bench.py --smoke --out /tmp/quant-smoke                                 # CPU, ~1-2 min, tiny budgets

Writes OUT/quant_bench.json (table + per-stage reports), OUT/quant_bench.md, OUT/<stage>/quant_report.json,
and the final W1A1 checkpoint in fp16 (OUT/ckpt-bit-w1a1, ~45 MB; --keep none to skip).
Needs torch, transformers, numpy, pydantic and rich.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "debian-sections"

# Retention (quantized / full-precision GLUE average) reported by the papers, W1A1 (1-1-1 bits).
PAPER_RETENTION = {"bit-w1a1": ("BiT W1A1, GLUE avg 73.5/83.9", 0.876), "bibert-w1a1": ("BiBERT W1A1, GLUE avg 63.2/83.9", 0.753)}
# Default budgets (epochs over the 5.5k training texts) and the smoke budgets (steps).
BUDGET = {"ternary-w2a8": 3.0, "ternary-w2e2a8": 3.0, "bit-w1a8": 3.0, "bit-w1a1": 8.0, "bit-w1e1a1": 8.0, "bibert-w1a1": 3.0}
# What --stages may name: the final scheme of each plan (a multi-step plan trains its intermediate too).
STAGES = ("ternary-w2a8", "bit-w1a1", "bibert-w1a1", "ternary-w2e2a8", "bit-w1e1a1")
SMOKE_STEPS = 2


def _accuracy(path: Path, split: str, device, limit: int | None, max_length: int) -> float:
    from edgekit.build.load import load
    from edgekit.build.quant.textdata import evaluate
    from edgekit.deploy import data as datafiles

    enc = load(path)
    labeled = datafiles.read_labeled(DATA / f"{split}.jsonl", list(enc.info.labels))
    texts, labels = labeled.texts[:limit], labeled.labels[:limit]
    return evaluate(enc, enc.module.to(device), texts, labels, device, max_length=max_length).accuracy


def _subset(src: Path, dst: Path, limit: int | None) -> Path:
    if limit is None:
        return src
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    step = max(1, len(lines) // limit)
    dst.write_text("\n".join(lines[::step][:limit]) + "\n")  # spread over the labels, not the first rows only
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / ".ckpt" / "minilm-debian", help="fine-tuned float classifier (fp32 or fp16 files)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quant")
    ap.add_argument("--ckpt-dir", type=Path, help="where the quantized checkpoints go (default: OUT/checkpoints, removed at the end)")
    ap.add_argument("--keep", default="bit-w1a1", help="stage whose fp16 checkpoint is copied to OUT/ckpt-<stage> ('none' to skip)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every training budget (epochs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bibert", action="store_true")
    ap.add_argument(
        "--stages",
        default="ternary-w2a8,bit-w1a1,bibert-w1a1",
        help=f"comma-separated plans to run, of {', '.join(STAGES)} (the *e* schemes quantize the embeddings too)",
    )
    ap.add_argument("--smoke", action="store_true", help=f"CPU check: {SMOKE_STEPS} steps per stage on 32 texts of 32 tokens, eval on 32")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from edgekit.build.quant.train import TrainOptions, run
    from edgekit.errors import EdgekitError

    device_opt = "cpu" if args.smoke and args.device == "auto" else args.device
    if not args.smoke and device_opt == "auto" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --smoke for the CPU check, or --device cpu for a (slow) full CPU run", file=sys.stderr)
        return 2
    device = torch.device(
        "cuda" if device_opt in ("auto", "cuda") and torch.cuda.is_available() else device_opt if device_opt != "auto" else "cpu"
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt_dir or out / "checkpoints"
    limit = 32 if args.smoke else None
    max_length = 32 if args.smoke else args.max_length
    train = _subset(DATA / "train.jsonl", out / "_smoke_train.jsonl", limit)
    _subset(DATA / "dev.jsonl", out / "_smoke_dev.jsonl", limit)
    t_start = time.time()

    def budget(scheme: str) -> dict:
        return {"steps": SMOKE_STEPS} if args.smoke else {"epochs": BUDGET[scheme] * args.scale}

    common = dict(
        model=str(args.model),
        data=str(train),
        batch_size=8 if args.smoke else args.batch_size,
        max_length=max_length,
        seed=args.seed,
        device=device_opt,
        save_dtype="float16",
        save_every=10**9,
        keep_state=False,
        progress=not args.smoke,
        calib_batches=2 if args.smoke else 4,
    )

    def bit(final: str) -> dict:  # BiT multi-step: fp32 -> bit-w1a8 -> final (embeddings, if any, quantized in the last step)
        return dict(
            scheme=final,
            multi_step=True,
            intermediate="bit-w1a8",
            **budget(final),
            **{f"intermediate_{k}": v for k, v in budget("bit-w1a8").items()},
        )

    every = {
        "ternary-w2a8": dict(scheme="ternary-w2a8", **budget("ternary-w2a8")),
        "ternary-w2e2a8": dict(scheme="ternary-w2e2a8", **budget("ternary-w2e2a8")),
        "bit-w1a1": bit("bit-w1a1"),
        "bit-w1e1a1": bit("bit-w1e1a1"),
        "bibert-w1a1": dict(scheme="bibert-w1a1", **budget("bibert-w1a1")),
    }
    wanted = [x.strip() for x in args.stages.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in every]
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    plans = [(name, every[name]) for name in wanted if not (args.no_bibert and name.startswith("bibert"))]

    rows: list[dict] = []
    reports: dict = {}
    try:
        t0 = time.time()
        fp_dev = _accuracy(args.model, "dev", device, limit, max_length)
        fp_test = _accuracy(args.model, "test", device, limit, max_length)
        rows.append(
            {
                "stage": "fp32",
                "bits (W-E-A)": "32-32-32",
                "teacher": "-",
                "dev": fp_dev,
                "test": fp_test,
                "train_s": 0.0,
                "flops_saving": 1.0,
                "size_saving": 1.0,
                "eval_s": round(time.time() - t0, 1),
            }
        )
        print(f"fp32: dev {fp_dev:.4f} test {fp_test:.4f}", flush=True)
        for name, plan in plans:
            report = run(TrainOptions(out=str(ckpt / name), **common, **plan))
            reports[name] = report
            for stage in report.stages:
                t0 = time.time()
                path = Path(stage.out)
                dev_acc = _accuracy(path, "dev", device, limit, max_length)
                test_acc = _accuracy(path, "test", device, limit, max_length)
                cfg, sav = stage.config, stage.model.savings
                rows.append(
                    {
                        "stage": stage.scheme,
                        "bits (W-E-A)": f"{cfg.weight_bits}-{cfg.embedding_bits}-{cfg.activation_bits}",
                        "teacher": stage.teacher,
                        "dev": dev_acc,
                        "test": test_acc,
                        "train_s": stage.seconds,
                        "steps": stage.steps,
                        "epochs": round(stage.epochs, 2),
                        "flops_saving": sav.flops_saving,
                        "size_saving": sav.size_saving,
                        "eval_s": round(time.time() - t0, 1),
                    }
                )
                print(f"{stage.scheme}: dev {dev_acc:.4f} test {test_acc:.4f} ({stage.seconds:.0f}s training)", flush=True)
                (out / stage.scheme).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path / "edgekit_quant.json", out / stage.scheme / "edgekit_quant.json")
                one = {**report.model_dump(mode="json", exclude={"stages"}), "stage": stage.model_dump(mode="json")}
                (out / stage.scheme).joinpath("quant_report.json").write_text(json.dumps(one, indent=1))
    except EdgekitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    for row in rows:
        row["retention_test"] = row["test"] / fp_test if fp_test else None
        row["paper_retention"] = PAPER_RETENTION.get(row["stage"], ("", None))[1]
    total = time.time() - t_start
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        "| stage | bits W-E-A | teacher | dev acc | test acc | retention (test) | paper retention | train s | FLOPs saving | size saving |"
    )
    lines = [f"# Low-bit MiniLM-L6 on debian-sections ({'SMOKE, not a result' if args.smoke else gpu})", "", header, "|" + "---|" * 10]
    for r in rows:
        paper = f"{r['paper_retention']:.1%}" if r["paper_retention"] else ""
        lines.append(
            f"| {r['stage']} | {r['bits (W-E-A)']} | {r['teacher']} | {r['dev']:.4f} | {r['test']:.4f} | {r['retention_test']:.1%} | {paper} | "
            f"{r['train_s']:.0f} | {r['flops_saving']:.1f}x | {r['size_saving']:.1f}x |"
        )
    from edgekit.build.quant.stats import FORMULA

    lines += [
        "",
        f"Total wall time {total:.0f} s on {gpu}. Paper retention: {'; '.join(f'{v[0]} = {v[1]:.1%}' for v in PAPER_RETENTION.values())}.",
        f"FLOPs/size as BiBERT counts them at {max_length} tokens: {FORMULA}",
    ]
    table = "\n".join(lines)
    print(table)
    (out / "quant_bench.md").write_text(table + "\n")
    (out / "quant_bench.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "device": gpu,
                "smoke": args.smoke,
                "seconds": round(total, 1),
                "torch": torch.__version__,
                "model": str(args.model),
            },
            indent=1,
        )
    )
    if args.keep != "none":
        src = next((Path(s.out) for r in reports.values() for s in r.stages if s.scheme == args.keep), None)
        if src is not None:
            dst = out / f"ckpt-{args.keep}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train_state", "step1-*", "quant_report.json"))
    if args.ckpt_dir is None:
        shutil.rmtree(ckpt, ignore_errors=True)
    for f in out.glob("_smoke_*.jsonl"):
        f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

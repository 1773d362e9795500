"""Low-bit schemes on an embedding model: retrieval and fidelity of each deployed artifact.

For all-MiniLM-L6-v2 (or any edgekit embedding checkpoint), next to the FP32 export and the INT8
PTQ baselines (:mod:`edgekit.build.ptq`: ONNX Runtime static QDQ INT8 and, where openvino and nncf
are installed, NNCF INT8 on openvino-cpu), each QAT scheme is trained with
:func:`edgekit.build.quant.train.run` (the API ``edgekit quantize`` calls), distilling the
embeddings on unlabeled text (the training texts of debian-sections and debian-works-with, labels
unused), lowered to an INT8 ONNX artifact (:func:`edgekit.build.lower.lower`) and scored ON THE
ARTIFACT (ONNX Runtime) on debian-synopsis query/doc pairs: recall@1, recall@10, MRR, and
fidelity = mean cosine of its embeddings to the FP32 artifact's on the same texts.

Selection on dev, report on test: each QAT stage keeps its best state by mean cosine to the
teacher on the dev pairs' texts (``eval_data``); test is only scored. Texts of the unlabeled
corpus whose synopsis or first paragraph is a dev/test query or doc are left out of it.

    python bench/quant_embed.py --model .ckpt/minilm-fp16 --work /tmp/qe --out bench/results/quant-embed
    python bench/quant_embed.py --model .ckpt/minilm-fp16 --work /tmp/qe --out /tmp/qe/out --limit 32 --steps 2   # a check of the script

bit-w1a1 is BiT multi-step (an intermediate bit-w1a8 stage teaches and initialises it, as
``edgekit quantize --multi-step``); its intermediate checkpoint is the bit-w1a8 row when both are asked.
Each QAT run is a child process (``--jobs`` at a time); FP32 and PTQ run meanwhile in this one.
OUT gets summary.json, summary.md and reports.json (every quant_report.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CORPUS = (DATA / "debian-sections" / "train.jsonl", DATA / "debian-works-with" / "train.jsonl")
PAIRS = DATA / "debian-synopsis"
SCHEMES = ("ternary-w2a8", "ternary-w2e2a8", "bit-w1a8", "bit-w1a1")


# ---- data ------------------------------------------------------------------------------------


def read_pairs(path: Path, limit: int | None) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    return [r["query"] for r in rows], [r["doc"] for r in rows]


def held_out(text: str, queries: set[str], docs: set[str]) -> bool:
    """True if ``text`` ("synopsis. first paragraph") has a held-out query as its synopsis or a held-out doc as its paragraph."""
    return any(text[: m.start()] in queries or text[m.end() :] in docs for m in re.finditer(r"\. ", text))


def build_corpus(work: Path, limit: int | None) -> tuple[Path, dict]:
    """The unlabeled distillation texts (one per line), without any text of the dev/test pairs."""
    queries, docs = set(), set()
    for split in ("dev", "test"):
        q, d = read_pairs(PAIRS / f"{split}.jsonl", None)
        queries.update(q)
        docs.update(d)
    texts, seen, dropped = [], set(), 0
    for path in CORPUS:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            text = " ".join(json.loads(line)["text"].split())
            if text in seen:
                continue
            seen.add(text)
            if held_out(text, queries, docs):
                dropped += 1
                continue
            texts.append(text)
    texts = texts[:limit] if limit else texts
    out = work / "unlabeled.txt"
    out.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return out, {"files": [str(p.relative_to(HERE.parent)) for p in CORPUS], "texts": len(texts), "held_out_dropped": dropped}


# ---- scoring an artifact ---------------------------------------------------------------------


def embed(artifact_dir: Path, texts: list[str], batch: int = 64) -> np.ndarray:
    """The artifact's embeddings of ``texts`` (run in batches of similar length, returned in order)."""
    from edgekit.deploy.runtime import Predictor

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with Predictor(artifact_dir) as pred:
        out = pred.predict([texts[i] for i in order], batch=batch)
    result = np.empty_like(out)
    result[order] = out
    return result


def size_bytes(artifact_dir: Path) -> int:
    """Bytes of the model files the artifact ships (graph, weights, packed low-bit codes)."""
    from edgekit.deploy import artifact

    manifest = artifact.read_manifest(artifact_dir, verify=False)
    size = (manifest.settings or {}).get("size", {})
    if "model_bytes" in size:
        return int(size["model_bytes"])
    return sum(f.stat().st_size for f in artifact_dir.iterdir() if f.suffix in (".onnx", ".data", ".xml", ".bin", ".lowbit"))


def score(artifact_dir: Path, pairs: dict, work: Path, name: str) -> dict:
    """Retrieval metrics on dev and test; the test embeddings are saved for fidelity."""
    from edgekit.deploy.eval import retrieval

    res = {"artifact": str(artifact_dir), "size_bytes": size_bytes(artifact_dir)}
    for split, (q, d) in pairs.items():
        t0 = time.time()
        emb = embed(artifact_dir, q + d)
        res[split] = retrieval(emb[: len(q)], emb[len(q) :])
        res[f"{split}_embed_seconds"] = round(time.time() - t0, 1)
        if split == "test":
            np.save(work / f"{name}.test.npy", emb)
    return res


# ---- QAT (child process) ---------------------------------------------------------------------


def runs_for(schemes: list[str]) -> dict[str, list[tuple[str, str]]]:
    """QAT run name -> [(row scheme, checkpoint sub-folder)]: bit-w1a8 rides on bit-w1a1's intermediate stage."""
    runs: dict[str, list[tuple[str, str]]] = {}
    for s in schemes:
        if s == "bit-w1a8" and "bit-w1a1" in schemes:
            continue
        runs[s] = [(s, "")]
    if "bit-w1a1" in runs and "bit-w1a8" in schemes:
        runs["bit-w1a1"] = [("bit-w1a8", "step1-bit-w1a8"), ("bit-w1a1", "")]
    return runs


def train_one(run: str, args: argparse.Namespace) -> dict:
    """Train, lower and score one QAT run (this process); returns its rows and report."""
    from edgekit.build.lower import lower
    from edgekit.build.quant.train import TrainOptions
    from edgekit.build.quant.train import run as train

    work = args.work
    opts = dict(
        model=str(args.model),
        data=str(work / "unlabeled.txt"),
        out=str(work / "q" / run),
        scheme=run,
        eval_data=str(work / "dev.jsonl"),
        batch_size=args.batch,
        lr_scaling="sqrt",
        seed=args.seed,
        progress=False,
        log_every=50,
        keep_state=False,
        save_dtype="float32",
    )
    if run == "bit-w1a1":
        opts.update(multi_step=True, intermediate="bit-w1a8")
    opts.update({"steps": args.steps, "intermediate_steps": args.steps} if args.steps else {"epochs": args.epochs})
    t0 = time.time()
    report = train(TrainOptions(**opts))
    rows = {}
    pairs = {"dev": read_pairs(work / "dev.jsonl", None), "test": read_pairs(work / "test.jsonl", None)}
    for scheme, sub in runs_for(args.schemes.split(","))[run]:
        ckpt = work / "q" / run / sub
        lowered = work / "lowered" / scheme
        lower(ckpt, lowered)
        rows[scheme] = score(lowered, pairs, work, scheme)
    return {"report": report.model_dump(mode="json"), "rows": rows, "wall_seconds": round(time.time() - t0, 1)}


def child(run: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--one", run, "--model", str(args.model), "--work", str(args.work), "--out", str(args.out)]
    cmd += ["--batch", str(args.batch), "--seed", str(args.seed), "--epochs", str(args.epochs), "--schemes", args.schemes]
    cmd += ["--steps", str(args.steps)] if args.steps else []
    log = args.work / f"{run}.log"
    t0 = time.time()
    try:
        with open(log, "w") as f:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        print(f"{run}: timed out after {args.timeout:.0f}s (log {log})", flush=True)
        return None
    path = args.work / f"{run}.result.json"
    if proc.returncode != 0 or not path.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"{run}: failed (exit {proc.returncode}); last lines of {log}:\n  " + "\n  ".join(tail), flush=True)
        return None
    print(f"{run}: done in {time.time() - t0:.0f}s", flush=True)
    return json.loads(path.read_text())


# ---- baselines (this process) ----------------------------------------------------------------


def ort_dynamic(fp32: Path, out: Path, **_) -> None:
    """ONNX Runtime dynamic INT8 (``quantize_dynamic`` with its defaults: int8 weights, activations quantized
    at run time) of the FP32 artifact, as an artifact beside it (same tokenizer and manifest, new model file)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.deploy import artifact

    manifest = artifact.read_manifest(fp32)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out)
    model = out / manifest.model_file
    quantize_dynamic(fp32 / manifest.model_file, model, weight_type=QuantType.QInt8)
    settings = {
        **manifest.settings,
        "ptq": {"method": "onnxruntime.quantization.quantize_dynamic", "options": {"weight_type": "QInt8"}},
        "size": {"model_bytes": model.stat().st_size},
    }
    artifact.write_manifest(out, manifest.model_copy(update={"precision": "int8", "name": out.name, "settings": settings}))


def baselines(args: argparse.Namespace, corpus: Path, pairs: dict) -> dict[str, dict]:
    """FP32 export and INT8 PTQ artifacts, scored; a baseline whose tool is missing is skipped with a line."""
    from edgekit.build import ptq
    from edgekit.build.export import export
    from edgekit.deps import is_installed
    from edgekit.errors import EdgekitError

    work, rows = args.work, {}
    fp32 = work / "fp32"
    export(str(args.model), fp32)
    rows["fp32"] = score(fp32, pairs, work, "fp32")
    print(f"fp32: test {json.dumps(rows['fp32']['test'])}", flush=True)
    samples = min(256, args.limit or 256)
    makers = {"ptq-ort-dynamic-int8": ort_dynamic, "ptq-ort-static-int8": ptq.quantize_onnx}
    if is_installed("openvino") and is_installed("nncf"):
        makers["ptq-nncf-int8"] = ptq.quantize_nncf
    else:
        print("ptq-nncf-int8: skipped (openvino/nncf not installed here)", flush=True)
    for name, make in makers.items():
        try:
            make(fp32, work / name, calibration=corpus, samples=samples)
            rows[name] = score(work / name, pairs, work, name)
            print(f"{name}: test {json.dumps(rows[name]['test'])}", flush=True)
        except EdgekitError as err:  # e.g. its fidelity gate refused the artifact: a result, not a crash
            print(f"{name}: failed: {err}", flush=True)
            rows[name] = {"error": str(err)}
    return rows


# ---- summary ---------------------------------------------------------------------------------


def fidelity(work: Path, name: str, ref: np.ndarray) -> float:
    emb = np.load(work / f"{name}.test.npy")
    cos = (emb * ref).sum(1) / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return float(cos.mean())


def summarize(rows: dict[str, dict], reports: dict, work: Path) -> list[dict]:
    ref = np.load(work / "fp32.test.npy")
    fp = rows["fp32"]["test"]
    out = []
    for name, r in rows.items():
        if "test" not in r:
            out.append({"scheme": name, "error": r.get("error", "no result")})
            continue
        t, d = r["test"], r["dev"]
        row = {
            "scheme": name,
            "test_recall@1": round(t["recall@1"], 4),
            "test_recall@10": round(t["recall@10"], 4),
            "test_mrr": round(t["mrr"], 4),
            "fidelity": round(fidelity(work, name, ref), 4),
            "size_mb": round(r["size_bytes"] / 1e6, 2),
            "delta_recall@1_pt": round(100 * (t["recall@1"] - fp["recall@1"]), 2),
            "delta_mrr_pt": round(100 * (t["mrr"] - fp["mrr"]), 2),
            "dev_recall@1": round(d["recall@1"], 4),
            "dev_mrr": round(d["mrr"], 4),
        }
        stage = next((s for rep in reports.values() for s in rep["stages"] if s["scheme"] == name), None)
        if stage is not None:
            curve = stage.get("dev_curve") or {}
            row |= {
                "train_steps": stage["steps"],
                "train_seconds": stage["seconds"],
                "samples_per_s": (stage.get("speed") or {}).get("samples_per_s"),
                "dev_cosine_best": curve.get("best_score"),
                "dev_best_step": curve.get("best_step"),
            }
        out.append(row)
    return out


def markdown(table: list[dict], meta: dict) -> str:
    lines = [
        f"# Low-bit schemes on an embedding model ({meta['model']}), retrieval on debian-synopsis",
        "",
        f"Test: {meta['test_pairs']} query/doc pairs (every doc ranked for every query); dev: {meta['dev_pairs']} pairs, used only to",
        "keep each QAT stage's best state (mean cosine to the teacher). Scores are of the deployed artifacts on ONNX Runtime",
        "(QAT: lowered INT8 QDQ, packed weights; FP32: the export; PTQ: edgekit.build.ptq). Fidelity: mean cosine to the FP32",
        f"artifact's embeddings of the test texts. Distilled on {meta['corpus']['texts']} unlabeled texts ({', '.join(meta['corpus']['files'])}).",
        f"Budget: {meta['budget']}, batch {meta['batch']}, seed {meta['seed']}. Rerun: `{meta['command']}`",
        "",
        "| scheme | R@1 | R@10 | MRR | fidelity | size MB | ΔR@1 (pt) | ΔMRR (pt) | dev R@1 | dev MRR | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['scheme']} | failed: {r['error'][:120]} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['scheme']} | {r['test_recall@1']:.4f} | {r['test_recall@10']:.4f} | {r['test_mrr']:.4f} | {r['fidelity']:.4f} | "
            f"{r['size_mb']} | {r['delta_recall@1_pt']:+.2f} | {r['delta_mrr_pt']:+.2f} | {r['dev_recall@1']:.4f} | {r['dev_mrr']:.4f} | "
            f"{r.get('train_seconds', '-')} |"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in meta["notes"]]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path(".ckpt/minilm-fp16"), help="embedding checkpoint (or 'default')")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--epochs", type=float, default=6.0, help="per QAT stage")
    ap.add_argument("--steps", type=int, help="per QAT stage, instead of --epochs")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=3, help="QAT runs at a time")
    ap.add_argument("--timeout", type=float, default=420, help="seconds per QAT run")
    ap.add_argument("--limit", type=int, help="first N corpus texts and N pairs per split (a check of the script)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = train_one(args.one, args)
        (args.work / f"{args.one}.result.json").write_text(json.dumps(res))
        return
    schemes = [s for s in args.schemes.split(",") if s]
    if unknown := [s for s in schemes if s not in SCHEMES]:
        sys.exit(f"unknown scheme(s) {', '.join(unknown)}; choose from {', '.join(SCHEMES)}")
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for split in ("dev", "test"):
        q, d = read_pairs(PAIRS / f"{split}.jsonl", args.limit)
        (args.work / f"{split}.jsonl").write_text("".join(json.dumps({"query": a, "doc": b}) + "\n" for a, b in zip(q, d)))
        pairs[split] = (q, d)
    corpus, corpus_info = build_corpus(args.work, args.limit)
    print(f"corpus: {json.dumps(corpus_info)}", flush=True)
    runs = runs_for(schemes)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {run: pool.submit(child, run, args) for run in runs}
        rows = baselines(args, corpus, pairs)
        results = {run: f.result() for run, f in futures.items()}
    reports = {}
    for run, res in results.items():
        if res is None:
            rows |= {scheme: {"error": f"QAT run {run} failed or timed out (see its log)"} for scheme, _ in runs[run]}
            continue
        reports[run] = res["report"]
        rows |= res["rows"]
    table = summarize(rows, reports, args.work)
    budget = f"{args.steps} steps per stage" if args.steps else f"{args.epochs:g} epochs per stage"
    command = "python bench/quant_embed.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command,
        "model": str(args.model),
        "corpus": corpus_info,
        "dev_pairs": len(pairs["dev"][0]),
        "test_pairs": len(pairs["test"][0]),
        "budget": budget,
        "batch": args.batch,
        "seed": args.seed,
        "wall_seconds": round(time.time() - t0, 1),
        "notes": [
            "bit-w1a1: BiT multi-step (bit-w1a8 intermediate stage, then W1A1 taught and initialised by it); "
            "the bit-w1a8 row is that intermediate checkpoint.",
            "ptq-ort-dynamic-int8: onnxruntime quantize_dynamic with its defaults (int8 weights, activations quantized at run time); "
            "ptq-ort-static-int8: edgekit ptq (static QDQ INT8, per-channel weights, MinMax activations, 256 calibration texts), "
            "refused when its parity gate fails; ptq-nncf-int8 (openvino-cpu) only where openvino and nncf are installed.",
        ],
    }
    (args.out / "summary.json").write_text(json.dumps({**meta, "rows": table, "raw": rows}, indent=1))
    (args.out / "summary.md").write_text(markdown(table, meta))
    (args.out / "reports.json").write_text(json.dumps(reports))
    print(markdown(table, meta), flush=True)
    print(f"total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

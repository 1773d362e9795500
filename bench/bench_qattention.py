"""bench/bench_qattention: a lowered W2E2A8 graph on ort-cpu, with each layer's attention as one QAttention.

Compared in one process, interleaved round by round (order reversed every other round), one CPU:

- ``W2E2A8 lowered, attention 8-bit / ort-cpu``: the scheme's default (Q, K, softmax and V quantized
  to 8 bits too), compiled for ort-cpu with its default settings;
- ``W2E2A8 lowered, attention float / ort-cpu``: the same scheme trained with ``--attention-bits 32``
  (the attention core in float), compiled with its default settings (fusion off);
- ``... / ort-cpu fusion=qattention``: that graph with each layer's quantized Q/K/V projections and
  attention as one ``com.microsoft QAttention`` (edgekit.deploy.targets.ort_fusion);
- ``ORT fused + dynamic INT8``: ONNX Runtime's transformer optimizer then ``quantize_dynamic``
  of the FP32 export, the best ORT configuration a user makes in two calls (bench/op_profile.py);
- on OpenVINO: both lowered graphs compiled for openvino-cpu (its default settings), against
  ``OpenVINO NNCF INT8`` (``nncf.quantize`` of the FP32 export, LATENCY hint, bench/op_profile.py).

Columns: b1 at real length (40 test texts of debian-sections at their natural length, and 40
synopses of debian-synopsis: short inputs), b1 s128 and b32 s128 (p50 ms per call), and each
graph's ratio to the best peer of the column (the faster of the two INT8 PTQ graphs). The lowered models are 4
QAT steps on the CPU (timing only, as bench/op_profile.py's): they are untrained, so the
outputs of the two float-attention graphs are compared to each other (cosine, argmax) but no
accuracy is claimed here.

Run:  python bench/bench_qattention.py [--rounds 10]   (builds cached in bench/work/qattention;
      uses bench/op_profile.py's builds in bench/work/op-profile)
Writes bench/results/qattention/README.md and qattention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from op_profile import DATA, OrtRunner, OvRunner, build, compile_variants, cpu_model, say, wall_p50

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "qattention"
SYNOPSIS = ROOT / "data" / "debian-synopsis" / "test.jsonl"
PEERS = ("ORT fused + dynamic INT8", "OpenVINO NNCF INT8")


def build_float_core(work: Path) -> dict[str, Path]:
    """The W2E2A8 checkpoint trained with the attention core in float, lowered, compiled both ways (cached)."""
    from edgekit.build import lower as lower_mod
    from edgekit.deploy import artifact, parity

    lowered = work / "lowered"
    if not (lowered / artifact.MANIFEST).exists():
        say("QAT 4 steps (--attention-bits 32) + lower (timing only)")
        subprocess.run(
            ["edgekit", "quantize", "default", "--data", str(DATA / "train.jsonl"), "--scheme", "ternary-w2e2a8", "--attention-bits", "32",
             "--out", str(work / "ckpt"), "--steps", "4", "--batch-size", "8", "--device", "cpu", "--no-progress", "--cache", str(work / "cache")],
            check=True,
        )  # fmt: skip
        lower_mod.TOLERANCE = parity.Tolerance(atol=0.25, min_cosine=0.99)  # untrained: as bench/op_profile.py
        lower_mod.lower(work / "ckpt", lowered)
    variants = (
        ("ort", "ort-cpu", {"tune": "off"}),
        ("ort-qattention", "ort-cpu", {"tune": "off", "fusion": "qattention"}),
        ("ov", "openvino-cpu", {"tune": "off"}),
    )
    return compile_variants(lowered, work, variants)


def model_bytes(d: Path) -> bytes:
    from edgekit.deploy import artifact, packing

    m = artifact.read_manifest(d)
    return packing.model_bytes(d, m.model_file, m.settings.get("packed"))


def feeds(fp32_dir: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    from edgekit.deploy import artifact, data
    from edgekit.deploy.tokenizer import Tokenizer

    tok = Tokenizer(fp32_dir, artifact.read_manifest(fp32_dir))
    texts = data.read_texts(DATA / "test.jsonl")
    rng = np.random.default_rng(0)  # the files are grouped by class: a seeded shuffle before any subset
    texts = [texts[i] for i in rng.permutation(len(texts))]
    short = [json.loads(line)["query"] for line in SYNOPSIS.read_text(encoding="utf-8").splitlines() if line.strip()]
    short = [short[i] for i in rng.permutation(len(short))]
    long = [t for t, n in zip(texts, tok.lengths(texts)) if n >= 128]
    return {
        "b1 real (descriptions)": [tok([t]) for t in texts[:40]],
        "b1 real (synopses)": [tok([t]) for t in short[:40]],
        "b1 s128": [tok([t], pad_to=128) for t in long[:8]],
        "b32 s128": [tok(long[:32], pad_to=128)],
    }


def ov_runner(d: Path, threads: int | None) -> OvRunner:
    import openvino as ov

    from edgekit.deploy import artifact, packing

    m = artifact.read_manifest(d)
    cfg = dict(m.settings["config"]) | ({"INFERENCE_NUM_THREADS": str(threads)} if threads else {})
    xml = d / m.model_file
    if m.settings.get("packed"):
        return OvRunner(ov.Core().read_model(xml.read_text(), ov.Tensor(packing.ir_weights(d, m.settings["packed"]))), cfg, False)
    return OvRunner(str(xml), cfg, False)


def agreement(a: OrtRunner, b: OrtRunner, group: list[dict[str, np.ndarray]]) -> dict[str, float]:
    def out(r: OrtRunner, f: dict[str, np.ndarray]) -> np.ndarray:
        return r.sess.run(r.outs, {k: f[k] for k in r.names})[0].reshape(-1)

    x = [out(a, f) for f in group]
    y = [out(b, f) for f in group]
    cos = [float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))) for u, v in zip(x, y)]
    return {"min_cosine": min(cos), "max_abs_diff": float(max(np.abs(u - v).max() for u, v in zip(x, y)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "qattention")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    peers = build(ROOT / "work" / "op-profile", None)
    mine = build_float_core(args.work)
    groups = feeds(peers["fp32"])
    runners = {
        "W2E2A8 lowered, attention 8-bit / ort-cpu": OrtRunner(model_bytes(peers["lowered-ort"]), args.threads, False),
        "W2E2A8 lowered, attention float / ort-cpu": OrtRunner(model_bytes(mine["ort"]), args.threads, False),
        "W2E2A8 lowered, attention float / ort-cpu fusion=qattention": OrtRunner(model_bytes(mine["ort-qattention"]), args.threads, False),
        PEERS[0]: OrtRunner(str(peers["ort-fused-int8"]), args.threads, False),
        "W2E2A8 lowered, attention 8-bit / openvino-cpu": ov_runner(peers["lowered-ov"], args.threads),
        "W2E2A8 lowered, attention float / openvino-cpu": ov_runner(mine["ov"], args.threads),
        PEERS[1]: OvRunner(
            str(peers["nncf"]),
            {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_NUM_THREADS": str(args.threads)} if args.threads else {}),
            False,
        ),
    }
    load_before = os.getloadavg()[0]
    walls = {g: wall_p50(runners, f, args.rounds if g != "b32 s128" else max(3, args.rounds // 2)) for g, f in groups.items()}
    names = list(runners)
    a, b = runners[names[1]], runners[names[2]]
    check = {g: agreement(a, b, f) for g, f in groups.items()}
    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "lengths": {g: round(float(np.mean([f["input_ids"].shape[1] for f in fs])), 1) for g, fs in groups.items()},
        "rounds": args.rounds,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qattention.json").write_text(json.dumps({"env": env, "p50_ms": walls, "float_core_vs_qattention": check}, indent=1))
    write_readme(env, walls, check)
    print((OUT / "README.md").read_text())


def write_readme(env: dict[str, Any], walls: dict[str, dict[str, float]], check: dict[str, dict[str, float]]) -> None:
    import onnxruntime as ort

    cols = list(walls)
    lines = [
        f"# ort-cpu: the attention of a lowered W2E2A8 graph as one QAttention ({env['cpu']}, {env['cores']} cores, onnxruntime {ort.__version__})",
        "",
        "Lowered models: 4 QAT steps of ternary-w2e2a8 on all-MiniLM-L6-v2 (timing only), one with the scheme's 8-bit attention core, "
        "one trained with `--attention-bits 32`. p50 ms per call, the graphs interleaved in one process, "
        f"{env['rounds']} rounds; 1-min load average {env['load'][0]} before, {env['load'][1]} after (other processes share these cores): "
        f"read the ratios. Mean tokens per text: {', '.join(f'{k} {v}' for k, v in env['lengths'].items())}. Ratio: to the faster of "
        f"`{PEERS[0]}` and `{PEERS[1]}` in each column (bold: the best graph); b32 is shown as ms per call (lower is better).",
        "",
        "| graph | " + " | ".join(f"{c} ms" for c in cols) + " | " + " | ".join(f"x peer {c}" for c in cols) + " |",
        "|---|" + "---|" * (2 * len(cols)),
    ]
    peer = {c: min(walls[c][p] for p in PEERS) for c in cols}
    best = {c: min(walls[c].values()) for c in cols}
    for name in walls[cols[0]]:
        ms = [walls[c][name] for c in cols]
        ratios = [f"**{walls[c][name] / peer[c]:.2f}**" if walls[c][name] == best[c] else f"{walls[c][name] / peer[c]:.2f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in ms) + " | " + " | ".join(ratios) + " |")
    lines += [
        "",
        "Float-core graph without vs with QAttention (one input scale for Q, K and V: the largest of the three learned ones): "
        + "; ".join(f"{g}: worst cosine {v['min_cosine']:.5f}, max abs diff {v['max_abs_diff']:.4f}" for g, v in check.items())
        + ".",
        "",
        "Rerun: `python bench/bench_qattention.py` (builds cached in bench/work/qattention and bench/work/op-profile).",
    ]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""bench/op_profile: where the time goes, per operator, in a lowered low-bit graph and in the INT8 graphs users make.

Graphs (MiniLM-L6 shapes; built once into bench/work/op-profile):

- lowered W2E2A8 on ort-cpu, unfused (edgekit's default) and with ``-o fusion=auto``;
- ORT fused INT8: ``onnxruntime.transformers.optimizer`` (bert, 12 heads, 384) on the FP32 export,
  then ``quantize_dynamic`` (QInt8 weights): what a user makes in two calls;
- NNCF INT8 IR: ``nncf.quantize`` of the FP32 export (256 training texts), OpenVINO CPU, LATENCY
  hint, OpenVINO's default inference precision;
- lowered W2E2A8 on openvino-cpu (dynamic shapes, f32, LATENCY: edgekit's default).

The lowered model: ``edgekit quantize default --scheme ternary-w2e2a8`` for 4 QAT steps on the CPU,
then ``edgekit lower`` (parity against the fake-quant model loosened to cosine 0.99: 4 steps do not
train the model; its codes and shapes are the real ones, which is all a timing needs). Pass
``--lowered DIR`` to profile another lowered artifact (e.g. a trained one from bench/compare).

Shapes: b1 at real length (texts of bench/data/debian-sections test, each at its own length),
b1 s128 and b32 s128 (test texts of >= 128 tokens, cut to 128).

ONNX Runtime: ``SessionOptions.enable_profiling``; node events of the timed runs (warm-up runs
dropped by their ``model_run`` span) summed by op type. OpenVINO: ``PERF_COUNT`` on, the infer
request's ``get_profiling_info()`` after every timed run, summed by node type (and exec type).
Each graph's wall p50 is timed without the profiler, graphs interleaved round by round (order
reversed every other round), in one process: on a shared 2-core machine read ratios, not ms.

Run:  python bench/op_profile.py          # builds (first run ~15 min on 2 cores), profiles, writes
      python bench/op_profile.py --runs 20
Writes bench/results/op-profile/op_profile.json and README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "debian-sections"
OUT = ROOT / "results" / "op-profile"
MATMUL_ORT = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "Gemm", "FusedMatMul", "QGemm"}
MATMUL_OV = {"FullyConnected", "FullyConnectedQuantizedLegacy", "FullyConnectedCompressed", "MatMul", "Gemm"}
SHAPES = ("b1 real", "b1 s128", "b32 s128")


def say(msg: str) -> None:
    print(f"[op-profile] {msg}", flush=True)


# ----------------------------------------------------------------------------- builds


def compile_variants(lowered: Path, work: Path, variants: tuple[tuple[str, str, dict[str, Any]], ...]) -> dict[str, Path]:
    """``{name: artifact dir}``: ``lowered`` compiled per ``(name, target, options)`` into ``work / name`` (cached),
    with a parity tolerance loose enough for an untrained lowered model."""
    from edgekit.build.compile import compile_artifact
    from edgekit.deploy import artifact, parity

    src = artifact.read_manifest(lowered)
    loose = parity.Tolerance(atol=0.5, min_cosine=0.97)
    paths = {}
    for name, target, options in variants:
        out = work / name
        if not (out / artifact.MANIFEST).exists():
            say(f"compile {name}")
            compile_artifact(lowered, src, target, out, options=options, tolerance=loose, progress=False)
        paths[name] = out
    return paths


def build(work: Path, lowered: Path | None) -> dict[str, Path]:
    from edgekit.build import plan, runner
    from edgekit.deploy import artifact, parity

    paths: dict[str, Path] = {}
    if lowered is None:
        lowered = work / "lowered"
        if not (lowered / artifact.MANIFEST).exists():
            say("QAT 4 steps + lower (timing only)")
            ckpt = work / "ckpt"
            subprocess.run(
                ["edgekit", "quantize", "default", "--data", str(DATA / "train.jsonl"), "--scheme", "ternary-w2e2a8", "--out", str(ckpt),
                 "--steps", "4", "--batch-size", "8", "--device", "cpu", "--no-progress", "--cache", str(work / "cache")],
                check=True,
            )  # fmt: skip
            from edgekit.build import lower as lower_mod

            lower_mod.TOLERANCE = parity.Tolerance(atol=0.25, min_cosine=0.99)  # untrained: see the module docstring
            lower_mod.lower(ckpt, lowered)
    variants = (
        ("lowered-ort", "ort-cpu", {"tune": "off"}),
        ("lowered-ort-fused", "ort-cpu", {"tune": "off", "fusion": "auto"}),
        ("lowered-ov", "openvino-cpu", {"tune": "off"}),
    )
    paths |= compile_variants(lowered, work, variants)
    fp32 = work / "fp32"
    if not (fp32 / artifact.MANIFEST).exists():
        say("export FP32")
        runner.run(plan.for_export("default", fp32))
    paths["fp32"] = fp32
    fp32_model = fp32 / artifact.read_manifest(fp32).model_file
    fused = work / "ort-fused-int8" / "model.onnx"
    if not fused.exists():
        say("ORT transformers optimizer + quantize_dynamic")
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer

        fused.parent.mkdir(parents=True, exist_ok=True)
        opt = optimizer.optimize_model(str(fp32_model), model_type="bert", num_heads=12, hidden_size=384)
        opt.save_model_to_file(str(fused.parent / "fused-fp32.onnx"))
        quantize_dynamic(
            str(fused.parent / "fused-fp32.onnx"), str(fused), weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1}
        )
    paths["ort-fused-int8"] = fused
    nncf_ir = work / "nncf" / "model.xml"
    if not nncf_ir.exists():
        say("NNCF INT8 (256 training texts)")
        import openvino as ov

        from edgekit.build.ptq import calibration_feeds, nncf_quantize

        calib = work / "calibration.txt"
        from edgekit.deploy import data

        calib.write_text("\n".join(data.read_texts(DATA / "train.jsonl")[:256]) + "\n")
        feeds, _ = calibration_feeds(fp32, artifact.read_manifest(fp32), calib, 256)
        nncf_ir.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(nncf_quantize(ov.convert_model(str(fp32_model)), feeds), str(nncf_ir))
    paths["nncf"] = nncf_ir
    return paths


# ----------------------------------------------------------------------------- runners


class OrtRunner:
    kind = "ort"

    def __init__(self, model: bytes | str, threads: int | None, profile: bool) -> None:
        import onnxruntime as ort

        from edgekit.deploy.targets.ort import session_options

        so = session_options(ort, "all", threads)
        if profile:
            so.enable_profiling = True
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.outs = [self.sess.get_outputs()[0].name]

    def __call__(self, feed: dict[str, np.ndarray]) -> None:
        self.sess.run(self.outs, {k: feed[k] for k in self.names})

    def profile(self, feeds: list[dict[str, np.ndarray]], warm: int, runs: int) -> dict[str, Any]:
        """ms per call by op type, averaged over ``runs`` calls of each feed (after ``warm`` each)."""
        for feed in feeds:
            for _ in range(warm + runs):
                self(feed)
        path = Path(self.sess.end_profiling())
        events = json.loads(path.read_text())
        path.unlink()
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        spans = [s for i, s in enumerate(spans) if i % (warm + runs) >= warm]
        calls = len(spans)
        by_op: collections.Counter[str] = collections.Counter()
        by_node: collections.Counter[str] = collections.Counter()
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            if not any(a <= e["ts"] <= b for a, b in spans):
                continue
            op = e["args"]["op_name"]
            by_op[op] += e["dur"] / 1e3 / calls
            by_node[f"{e['name'].removesuffix('_kernel_time')} ({op})"] += e["dur"] / 1e3 / calls
        return {
            "ops": dict(by_op),
            "top_nodes": dict(by_node.most_common(8)),
            "profiled_wall_ms": statistics.median((b - a) / 1e3 for a, b in spans),
        }


class OvRunner:
    kind = "ov"

    def __init__(self, model: Any, config: dict[str, str], profile: bool, static: list[int] | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        cfg = dict(config) | ({"PERF_COUNT": "YES"} if profile else {})
        if static is not None:  # every input reshaped to this static shape (a user's best p50 at one length)
            model = core.read_model(model) if isinstance(model, str) else model.clone()  # the caller's model stays dynamic
            model.reshape({p.get_any_name(): static for p in model.inputs})
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.names = [p.get_any_name() for p in self.compiled.inputs]

    def __call__(self, feed: dict[str, np.ndarray]) -> None:
        self.request.infer({k: feed[k] for k in self.names})

    def profile(self, feeds: list[dict[str, np.ndarray]], warm: int, runs: int) -> dict[str, Any]:
        """ms per call by node type (and node type + exec type), averaged over ``runs`` calls of each feed."""
        by_op: collections.Counter[str] = collections.Counter()
        by_exec: collections.Counter[str] = collections.Counter()
        walls = []
        calls = runs * len(feeds)
        for feed in feeds:
            for _ in range(warm):
                self(feed)
            for _ in range(runs):
                t = time.perf_counter()
                self(feed)
                walls.append((time.perf_counter() - t) * 1e3)
                for p in self.request.get_profiling_info():
                    ms = p.real_time.total_seconds() * 1e3 / calls
                    if ms <= 0:
                        continue
                    by_op[p.node_type] += ms
                    by_exec[f"{p.node_type} [{p.exec_type}]"] += ms
        return {"ops": dict(by_op), "top_exec": dict(by_exec.most_common(8)), "profiled_wall_ms": statistics.median(walls)}


def runners(paths: dict[str, Path], threads: int | None, profile: bool, shape: str) -> dict[str, Any]:
    """The graphs compared at ``shape``; at "b1 s128" NNCF's IR and the lowered one also run reshaped to a static [1,128]."""
    import openvino as ov

    from edgekit.deploy import artifact, packing

    def ort_model(d: Path) -> bytes:
        m = artifact.read_manifest(d)
        return (
            packing.model_bytes(d, m.model_file, m.settings.get("packed")) if m.settings.get("packed") else (d / m.model_file).read_bytes()
        )

    def ov_model(d: Path) -> tuple[Any, dict[str, str]]:
        m = artifact.read_manifest(d)
        xml = d / m.model_file
        if m.settings.get("packed"):
            return ov.Core().read_model(xml.read_text(), ov.Tensor(packing.ir_weights(d, m.settings["packed"]))), m.settings["config"]
        return str(xml), m.settings["config"]

    cfg_threads = {"INFERENCE_NUM_THREADS": str(threads)} if threads else {}
    low_ov, low_cfg = ov_model(paths["lowered-ov"])
    nncf_cfg = {"PERFORMANCE_HINT": "LATENCY"} | cfg_threads
    static = {}
    if shape == "b1 s128":  # both IRs reshaped to a static [1,128]: what either user would do for one fixed length
        static = {
            "OpenVINO NNCF INT8 static [1,128]": OvRunner(str(paths["nncf"]), nncf_cfg, profile, [1, 128]),
            "W2E2A8 lowered / openvino-cpu static [1,128]": OvRunner(low_ov, low_cfg | cfg_threads, profile, [1, 128]),
        }
    return {
        "W2E2A8 lowered / ort-cpu": OrtRunner(ort_model(paths["lowered-ort"]), threads, profile),
        "W2E2A8 lowered / ort-cpu fusion=auto": OrtRunner(ort_model(paths["lowered-ort-fused"]), threads, profile),
        "ORT fused + dynamic INT8": OrtRunner(str(paths["ort-fused-int8"]), threads, profile),
        "OpenVINO NNCF INT8": OvRunner(str(paths["nncf"]), nncf_cfg, profile),
        **static,
        "W2E2A8 lowered / openvino-cpu": OvRunner(low_ov, low_cfg | cfg_threads, profile),
    }


# ----------------------------------------------------------------------------- feeds, timing


def shape_feeds(fp32_dir: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    from edgekit.deploy import artifact, data
    from edgekit.deploy.tokenizer import Tokenizer

    tok = Tokenizer(fp32_dir, artifact.read_manifest(fp32_dir))
    texts = data.read_texts(DATA / "test.jsonl")
    lengths = tok.lengths(texts)
    long = [t for t, n in zip(texts, lengths) if n >= 128]
    return {
        "b1 real": [tok([t]) for t in texts[:: max(1, len(texts) // 40)][:40]],
        "b1 s128": [tok([t], pad_to=128) for t in long[:8]],
        "b32 s128": [tok(long[:32], pad_to=128)],
    }


def wall_p50(run: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int) -> dict[str, float]:
    """p50 ms per call, graphs interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in run}
    names = list(run)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for feed in feeds:
                t = time.perf_counter()
                run[name](feed)
                times[name].append((time.perf_counter() - t) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def is_matmul(op: str, kind: str) -> bool:
    return op in (MATMUL_ORT if kind == "ort" else MATMUL_OV)


# ----------------------------------------------------------------------------- report


def table(shape: str, res: dict[str, Any], kinds: dict[str, str]) -> list[str]:
    graphs = list(res)
    totals = {g: sum(res[g]["ops"].values()) for g in graphs}
    share = collections.Counter()
    for g in graphs:
        for op, ms in res[g]["ops"].items():
            share[op] = max(share[op], ms / totals[g])
    ops = [op for op, _ in share.most_common(14)]
    lines = [f"### {shape}", "", "| op type | " + " | ".join(graphs) + " |", "|---" * (len(graphs) + 1) + "|"]
    for op in ops:
        cells = [f"{res[g]['ops'][op]:.3f} ({100 * res[g]['ops'][op] / totals[g]:.0f}%)" if op in res[g]["ops"] else "" for g in graphs]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    others = {g: totals[g] - sum(res[g]["ops"].get(op, 0) for op in ops) for g in graphs}
    lines.append("| (other ops) | " + " | ".join(f"{others[g]:.3f} ({100 * others[g] / totals[g]:.0f}%)" for g in graphs) + " |")
    mm = {g: sum(ms for op, ms in res[g]["ops"].items() if is_matmul(op, kinds[g])) for g in graphs}
    lines.append("| **matmul time** | " + " | ".join(f"**{mm[g]:.3f}** ({100 * mm[g] / totals[g]:.0f}%)" for g in graphs) + " |")
    lines.append(
        "| **non-matmul time** | "
        + " | ".join(f"**{totals[g] - mm[g]:.3f}** ({100 * (totals[g] - mm[g]) / totals[g]:.0f}%)" for g in graphs)
        + " |"
    )
    lines.append("| sum of op times | " + " | ".join(f"{totals[g]:.3f}" for g in graphs) + " |")
    lines.append("| wall p50, no profiler | " + " | ".join(f"{res[g]['wall_p50_ms']:.3f}" for g in graphs) + " |")
    best = min(res[g]["wall_p50_ms"] for g in graphs)
    lines.append("| x best wall p50 | " + " | ".join(f"{res[g]['wall_p50_ms'] / best:.2f}" for g in graphs) + " |")
    lines.append("")
    for g in graphs:
        top = res[g].get("top_exec") or res[g].get("top_nodes") or {}
        what = "node type [exec type]" if "top_exec" in res[g] else "node (op type)"
        lines.append(f"- {g}, top {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in list(top.items())[:6]))
    return lines + [""]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "op-profile")
    ap.add_argument("--lowered", type=Path, default=None, help="a lowered ONNX artifact (default: built here, untrained)")
    ap.add_argument("--runs", type=int, default=10, help="profiled runs per feed group (after warm-up)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the wall-clock timing")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite README.md from the last op_profile.json")
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((OUT / "op_profile.json").read_text())
        write_readme(saved["env"], saved["results"], saved["kinds"])
        return
    args.work.mkdir(parents=True, exist_ok=True)
    paths = build(args.work, args.lowered)
    feeds = shape_feeds(paths["fp32"])
    import onnxruntime as ort
    import openvino as ov

    results: dict[str, dict[str, Any]] = {}
    walls, kinds = {}, {}
    for shape in SHAPES:
        plain = runners(paths, args.threads, profile=False, shape=shape)
        kinds |= {g: r.kind for g, r in plain.items()}
        walls[shape] = wall_p50(plain, feeds[shape], args.rounds if shape != "b32 s128" else max(3, args.rounds))
        del plain
    for shape in SHAPES:
        say(f"profile {shape}")
        results[shape] = {}
        profiled = runners(paths, args.threads, profile=True, shape=shape)  # fresh sessions: one profile per shape
        runs = args.runs if shape != "b32 s128" else max(3, args.runs // 3)
        for g, r in profiled.items():
            results[shape][g] = {**r.profile(feeds[shape][:6], 2, runs), "wall_p50_ms": walls[shape][g]}
        del profiled
    for p in Path.cwd().glob("onnxruntime_profile__*.json"):
        p.unlink()
    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "openvino": ov.get_version(),
        "lowered": str(args.lowered or "bench/work/op-profile/lowered (4 QAT steps of ternary-w2e2a8 on all-MiniLM-L6-v2, timing only)"),
        "load": round(os.getloadavg()[0], 1),
        "lengths": {s: [int(f["input_ids"].shape[1]) for f in feeds[s]][:8] for s in SHAPES},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "op_profile.json").write_text(json.dumps({"env": env, "results": results, "kinds": kinds}, indent=1))
    write_readme(env, results, kinds)


def write_readme(env: dict[str, Any], results: dict[str, Any], kinds: dict[str, str]) -> None:
    md = [
        f"# Per-op profile: lowered W2E2A8 vs the INT8 graphs users make ({env['cpu']}, {env['cores']} cores, "
        f"onnxruntime {env['onnxruntime']}, openvino {env['openvino']})",
        "",
        f"Lowered model: {env['lowered']}. Cells: ms per call (share of that graph's summed op time). "
        "ORT: profiler node events; OpenVINO: PERF_COUNT real_time per node. 'matmul time' = "
        f"ORT {', '.join(sorted(MATMUL_ORT))}; OpenVINO {', '.join(sorted(MATMUL_OV))} (fused Attention / SDPA counts as non-matmul). "
        "Wall p50: same graphs without the profiler, interleaved in one process. The machine was shared "
        f"(load average {env.get('load', '?')} on {env['cores']} cores while this ran): absolute ms are inflated and noisy; "
        "read the shares and the ratios.",
        "",
        "Rerun: `python bench/op_profile.py` (builds cached in bench/work/op-profile).",
        "",
    ]
    for shape in SHAPES:
        md += table(shape, results[shape], kinds)
    (OUT / "README.md").write_text("\n".join(md))
    say(f"wrote {OUT}")


if __name__ == "__main__":
    main()

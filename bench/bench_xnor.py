"""Microbenchmark: one [M,384]x[384,1536] matmul, 1-bit BinaryMatMul vs the INT8 kernels, 2 threads.

    python bench/bench_xnor.py [--ms 1,16,128,4096] [--rounds 5] [--model LOWERED_W1A1_DIR] [--out bench/results/xnor/bench.json]
    python bench/bench_xnor.py --skip-micro --compiled OFF_DIR,ON_DIR      # two openvino-cpu artifacts

Configurations, all in one process, interleaved round by round (the machine is shared: only the
ratios mean much), each call timed on its own, reported as the median and 10th percentile of calls:

- ``ov BinaryMatMul``: the edgekit 1-bit kernel (binarize x >= beta, XOR + popcount, scale, bias);
- ``ov int8 FC (QDQ)``: QuantizeLinear(x) -> DequantizeLinear -> MatMul(DequantizeLinear(int8 W)), which
  the OpenVINO CPU plugin runs as an INT8 FullyConnected (the NNCF-style IR);
- ``ov lowered W1A1``: the pattern ``edgekit lower`` emits for a binary linear today (GreaterOrEqual,
  Cast, Mul, Sub, QuantizeLinear, DequantizeLinear, MatMul with int8 {-1,+1} codes), on OpenVINO;
- ``ort MatMulIntegerToFloat``: DynamicQuantizeLinear + MatMulIntegerToFloat (ORT's dynamic INT8).

The lowered pattern on ONNX Runtime checks, untimed, that the 1-bit kernel computes the same values.

Ratios are to ``ov int8 FC (QDQ)`` (< 1: faster). Random weights and inputs: speed only (the kernel's
exactness is tested in tests/deploy/kernels).

With ``--model``, a lowered W1A1 artifact (``edgekit lower``) is also timed end to end on OpenVINO CPU,
as lowered and as rewritten by :mod:`edgekit.deploy.kernels.rewrite` (every binary matmul on its own:
``bits=False``; each FFN's two matmuls joined by packed bits; and as compile ships it, each attention one
BinaryAttention too), at b1 s16 (real
length), b1 s128 and b32 s128 (random token ids, full attention mask).

With ``--compiled OFF_DIR,ON_DIR``, two openvino-cpu artifacts of one lowered W1A1 model, compiled with
``edgekit compile LOWERED --target openvino-cpu -o xnor=off -o tune=off -o threads=2 --out OFF`` and the
same with ``-o xnor=on``, are timed through the target's own sessions (the library the artifact ships,
loaded as ``edgekit profile`` loads it), at the same three shapes; ``--perf`` adds each artifact's time per
executed node type at each shape (OpenVINO's perf counters, untimed runs apart from the interleaved ones;
the extension's ``Reference`` nodes split into BinaryMatMul and BinaryAttention by name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

from edgekit.deploy.kernels import xnor

K, N, THREADS = 384, 1536, 2
BETA, ALPHA = 0.05, 0.4
rng = np.random.default_rng(0)
CODES = rng.choice(np.array([-1, 1], np.int8), size=(K, N))  # [in, out], as the lowered graph stores them
W_SCALE = (rng.random(N).astype(np.float32) + 0.5) * 0.01
BIAS = rng.standard_normal(N).astype(np.float32)


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _model(nodes, inits, opsets=(("", 17),)) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _weight_nodes() -> tuple[list, list]:
    inits = [numpy_helper.from_array(CODES, "W"), numpy_helper.from_array(W_SCALE, "Ws"), numpy_helper.from_array(BIAS, "bias")]
    nodes = [
        _const("Wz", np.zeros(N, np.int8)),
        helper.make_node("DequantizeLinear", ["W", "Ws", "Wz"], ["Wf"], axis=1),
        helper.make_node("MatMul", ["Xdq", "Wf"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["Y"]),
    ]
    return nodes, inits


def qdq_int8_model() -> onnx.ModelProto:
    wn, inits = _weight_nodes()
    nodes = [
        _const("s", np.float32(0.05)),
        _const("z", np.int8(0)),
        helper.make_node("QuantizeLinear", ["X", "s", "z"], ["Xq"]),
        helper.make_node("DequantizeLinear", ["Xq", "s", "z"], ["Xdq"]),
        *wn,
    ]
    return _model(nodes, inits)


def lowered_w1a1_model() -> onnx.ModelProto:
    """The lowered binary linear: sign(x - beta) in {-a, +a}, QDQ with scale a, int8 {-1,+1} weights."""
    wn, inits = _weight_nodes()
    nodes = [
        _const("beta", np.float32(BETA)),
        _const("two_a", np.float32(2 * ALPHA)),
        _const("a", np.float32(ALPHA)),
        _const("z", np.int8(0)),
        helper.make_node("GreaterOrEqual", ["X", "beta"], ["ge"]),
        helper.make_node("Cast", ["ge"], ["gef"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["gef", "two_a"], ["m2"]),
        helper.make_node("Sub", ["m2", "a"], ["pm"]),
        helper.make_node("QuantizeLinear", ["pm", "a", "z"], ["Xq"]),
        helper.make_node("DequantizeLinear", ["Xq", "a", "z"], ["Xdq"]),
        *wn,
    ]
    return _model(nodes, inits)


def binary_model() -> onnx.ModelProto:
    scale = np.float32(ALPHA) * W_SCALE
    inits = [
        numpy_helper.from_array(xnor.pack_weights(CODES.T), "Wp"),
        numpy_helper.from_array(scale.astype(np.float32), "scale"),
        numpy_helper.from_array(BIAS, "bias"),
        numpy_helper.from_array(np.array([BETA, 0.0, 1.0], np.float32), "params"),
    ]
    node = xnor.make_node(["X", "Wp", "scale", "bias", "params"], "Y", n=N, k=K, mode="pm1")
    return _model([node], inits, opsets=(("", 17), (xnor.DOMAIN, 1)))


def dynamic_int8_model() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(CODES, "W"), numpy_helper.from_array(W_SCALE, "Ws"), numpy_helper.from_array(BIAS, "bias")]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["X"], ["Xq", "Xs", "Xz"]),
        helper.make_node("MatMulIntegerToFloat", ["Xq", "W", "Xs", "Ws", "Xz", "", "bias"], ["Y"], domain="com.microsoft"),
    ]
    return _model(nodes, inits, opsets=(("", 17), ("com.microsoft", 1)))


class OvRunner:
    def __init__(self, core: ov.Core, model: onnx.ModelProto | None, path: Path, extension: Path | None = None) -> None:
        """``extension``: read the graph as the openvino-cpu target does (``ov.convert_model`` with the kernel)."""
        if model is not None:
            onnx.save(model, str(path))
        read = ov.convert_model(str(path), extension=str(extension)) if extension else core.read_model(str(path))
        config = {
            "INFERENCE_NUM_THREADS": str(THREADS),
            "NUM_STREAMS": "1",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.request = core.compile_model(read, "CPU", config).create_infer_request()

    def __call__(self, x) -> np.ndarray:
        self.request.infer(x if isinstance(x, dict) else {0: x}, share_inputs=True)
        return self.request.get_output_tensor(0).data


class OrtRunner:
    def __init__(self, model: onnx.ModelProto) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"X": x})[0]


def interleave(runners: dict, feed, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """Per-call wall times of each runner on ``feed``, rounds interleaved: median and 10th percentile (us),
    and the process CPU time per call (us, all threads): on a machine shared with other jobs, CPU time
    counts the work done, wall time also counts the waits for a core."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, float] = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(2):
                run(feed)
            c0 = time.process_time()
            for _ in range(reps):
                t = time.perf_counter()
                run(feed)
                times[name].append((time.perf_counter() - t) * 1e6)
            cpu[name] += time.process_time() - c0
    return {
        name: {"p50": float(np.median(v)), "p10": float(np.percentile(v, 10)), "cpu": cpu[name] / len(v) * 1e6} for name, v in times.items()
    }


def _line(label: str, stats: dict, base: str) -> str:
    return f"{label}: " + "; ".join(
        f"{n} p50 {v['p50']:.1f}us ({v['p50'] / stats[base]['p50']:.2f}x) p10 {v['p10'] / stats[base]['p10']:.2f}x cpu {v['cpu']:.1f}us ({v['cpu'] / stats[base]['cpu']:.2f}x)"
        for n, v in stats.items()
    )


def microbench(core: ov.Core, args, work: Path) -> dict:
    runners = {
        "ov BinaryMatMul": OvRunner(core, binary_model(), work / "binary.onnx"),
        "ov int8 FC (QDQ)": OvRunner(core, qdq_int8_model(), work / "qdq.onnx"),
        "ov lowered W1A1": OvRunner(core, lowered_w1a1_model(), work / "lowered.onnx"),
        "ort MatMulIntegerToFloat": OrtRunner(dynamic_int8_model()),
    }
    check = OrtRunner(lowered_w1a1_model())  # the lowered pattern on ONNX Runtime: only the agreement check, not timed
    base = "ov int8 FC (QDQ)"
    rows = []
    for m in (int(v) for v in args.ms.split(",")):
        x = rng.standard_normal((m, K)).astype(np.float32)
        # same function: the lowered pattern on ONNX Runtime and the 1-bit kernel agree (integer dot, then the same scale)
        agree = float(np.abs(check(x) - runners["ov BinaryMatMul"](x)).max())
        reps = max(5, int(2e4 // (m * 20 + 100)))
        stats = interleave(runners, x, args.rounds, reps)
        rows.append({"M": m, "reps_per_round": reps, "max_abs_diff_vs_ort_lowered": agree, "us": stats})
        print(_line(f"M={m} (max |BinaryMatMul - ORT lowered| = {agree:.1e})", stats, base), flush=True)
    return {"shape": f"[M,{K}]x[{K},{N}]", "baseline": base, "rows": rows}


def end_to_end(core: ov.Core, args, work: Path) -> dict:
    """A lowered W1A1 artifact on openvino-cpu, as lowered vs rewritten for the 1-bit kernel."""
    from edgekit.deploy import artifact, packing
    from edgekit.deploy.kernels import rewrite

    manifest = artifact.read_manifest(args.model)
    model = onnx.load_from_string(packing.model_bytes(Path(args.model), manifest.model_file, manifest.settings.get("packed")))
    onnx.save(model, str(work / "e2e-lowered.onnx"))
    counts = {}
    variants = ("rewritten", "rewritten+bits", "rewritten+bits+attention")
    for name, bits, attention in zip(variants, (False, True, True), (False, False, True)):
        new, report = rewrite.rewrite(model, bits=bits, attention=attention)
        onnx.save(new, str(work / f"e2e-{name}.onnx"))
        counts[name] = {k: len(report[k]) for k in ("rewritten", "kept", "fused", "attention")}
        print(
            f"{args.model} {name}: {len(report['rewritten'])} matmuls rewritten, {len(report['kept'])} kept, "
            f"{len(report['fused'])} pairs joined, {len(report['attention'])} attentions as one op",
            flush=True,
        )
    lib = xnor.load(core)
    runners = {name: OvRunner(core, None, work / f"e2e-{name}.onnx", lib) for name in ("lowered", *variants)}
    names = [i.name for i in model.graph.input]
    rows = []
    for label, b, s in (("b1 real length (16 tokens)", 1, 16), ("b1 s128", 1, 128), ("b32 s128", 32, 128)):
        ids = rng.integers(1000, 20000, size=(b, s)).astype(np.int64)
        full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feed = {n: full[n] for n in names}
        ref = runners["lowered"](feed).copy()
        got = max(float(np.abs(ref - runners[n](feed)).max()) for n in variants)
        reps = max(3, int(400 // (b * s / 16)))
        stats = interleave(runners, feed, args.rounds, reps)
        row = {"case": label, "reps_per_round": reps, "max_abs_diff_rewritten_vs_lowered": got, "us": stats}
        if b > 1:
            row["seq_per_s"] = {n: b / (v["p50"] * 1e-6) for n, v in stats.items()}
        rows.append(row)
        print(_line(label, stats, "lowered"), flush=True)
    return {"model": str(args.model), "rewrite": counts, "rows": rows}


def compiled(args) -> dict:
    """Two openvino-cpu artifacts (xnor=off, xnor=on) through ``OpenVinoCpuTarget.load``, interleaved."""
    from edgekit.deploy import artifact, targets

    target = targets.get("openvino-cpu")
    dirs = dict(zip(("xnor=off", "xnor=on"), args.compiled.split(",")))
    manifests = {k: artifact.read_manifest(d) for k, d in dirs.items()}
    shipped = {k: "library" in (m.settings.get("kernels") or {}).get("xnor", {}) for k, m in manifests.items()}
    if shipped != {"xnor=off": False, "xnor=on": True}:
        raise SystemExit("--compiled takes OFF_DIR,ON_DIR: an artifact compiled with -o xnor=off, then one with -o xnor=on")
    sessions = {k: target.load(Path(d), manifests[k]).__enter__() for k, d in dirs.items()}
    runners = {k: (lambda feed, s=s: s.infer(feed)) for k, s in sessions.items()}
    names = [i.name for i in manifests["xnor=off"].inputs]
    tok = Path(dirs["xnor=off"]) / "tokenizer.json"
    vocab = len(json.loads(tok.read_text())["model"]["vocab"]) if tok.exists() else 20000
    longest = manifests["xnor=off"].tokenizer.max_length
    rows = []
    for label, b, s in (("b1 real length (16 tokens)", 1, 16), ("b1 s128", 1, min(128, longest)), ("b32 s128", 32, min(128, longest))):
        ids = rng.integers(min(1000, vocab // 2), vocab, size=(b, s)).astype(np.int64)
        full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feed = {n: full[n] for n in names}
        diff = max(
            float(np.abs(runners["xnor=off"](feed)[o] - runners["xnor=on"](feed)[o]).max()) for o in sessions["xnor=on"].output_names
        )
        reps = max(3, int(400 // (b * s / 16)))
        stats = interleave(runners, feed, args.rounds, reps)
        rows.append({"case": label, "reps_per_round": reps, "max_abs_diff_on_vs_off": diff, "us": stats})
        print(_line(f"{label} (max |on - off| = {diff:.1e})", stats, "xnor=off"), flush=True)
        if args.perf:
            rows[-1]["ms_by_op"] = {k: perf_by_op(Path(d), manifests[k], feed) for k, d in dirs.items()}
    for s in sessions.values():
        s.__exit__(None, None, None)
    kernel = manifests["xnor=on"].settings["kernels"]["xnor"]
    return {"artifacts": dirs, "config": manifests["xnor=on"].settings["config"], "kernel": kernel, "rows": rows}


def perf_by_op(artifact_dir: Path, manifest, feed, runs: int = 10) -> dict[str, float]:
    """ms per call by executed node type (OpenVINO ``PERF_COUNT``: the artifact loaded again as its session loads
    it, with the counters on; ``runs`` calls after two warm-ups); printed, largest first."""
    from edgekit.deploy.targets.openvino import OpenVinoSession

    record = (manifest.settings.get("kernels") or {}).get("xnor")
    config = {**manifest.settings.get("config", {}), "PERF_COUNT": True, "INFERENCE_NUM_THREADS": str(THREADS)}
    kernel = (artifact_dir, record) if record and record.get("library") else None
    by_op: dict[str, float] = {}
    with OpenVinoSession(artifact_dir / manifest.model_file, config, packed=manifest.settings.get("packed"), xnor_kernel=kernel) as session:
        request = session.compiled.create_infer_request()
        for i in range(runs + 2):
            request.infer(feed)
            if i >= 2:
                for info in request.get_profiling_info():
                    kind = info.node_type
                    if kind == "Reference":  # OpenVINO's name for an extension op: say which
                        kind = next((op for op in (xnor.ATTENTION_OP, xnor.OP_TYPE) if op in info.node_name), kind)
                    by_op[kind] = by_op.get(kind, 0.0) + info.real_time.total_seconds() * 1e3 / runs
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
    total = sum(top.values())
    print(f"  {artifact_dir.name}: {total:.2f} ms summed; " + ", ".join(f"{k} {v:.2f}" for k, v in list(top.items())[:10]), flush=True)
    return top


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,16,128,4096")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--model", help="a lowered W1A1 artifact directory: also time it end to end, lowered vs rewritten")
    ap.add_argument("--compiled", help="OFF_DIR,ON_DIR: openvino-cpu artifacts compiled with -o xnor=off and -o xnor=on")
    ap.add_argument("--perf", action="store_true", help="with --compiled: also ms per executed node type (OpenVINO PERF_COUNT)")
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--out", default="bench/results/xnor/bench.json")
    args = ap.parse_args()
    THREADS = args.threads
    work = Path("bench/work/xnor")
    work.mkdir(parents=True, exist_ok=True)
    core = ov.Core()
    lib = xnor.load(core)
    results = {
        "threads": THREADS,
        "isa": xnor.isa(lib),
        "openvino": ov.get_version(),
        "onnxruntime": ort.__version__,
        "note": "one process, configurations interleaved per round, per-call wall times; the 2-core machine is shared, so compare ratios",
    }
    if not args.skip_micro:
        results["microbench"] = microbench(core, args, work)
    if args.model:
        results["end_to_end"] = end_to_end(core, args, work)
    if args.compiled:
        results["compiled"] = compiled(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

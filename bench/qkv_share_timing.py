"""What one shared activation quantize for Q, K and V would save (timing only; the graph computes another function).

A lowered graph quantizes the output of each LayerNorm three times, once per Q, K and V input, because QAT
learns one input quantizer per linear (their learned 8-bit scales differ by at most ~4 % in the ternary-w2a8
run of bench/results/quant-ternary). NNCF's IR quantizes it once. This script rewires K's and V's matmul
inputs to Q's QuantizeLinear in a lowered artifact (12 nodes fewer on MiniLM-L6; each matmul keeps its DequantizeLinear), then
times both graphs in one process, interleaved, on OpenVINO CPU (the ONNX read directly) and ONNX Runtime,
and sums OpenVINO's per-node times into matmul and non-matmul. The outputs differ (K and V now use Q's
scale): this measures what sharing the quantizer in training would buy, not a model.

    python bench/qkv_share_timing.py [--lowered bench/work/op-profile/lowered] [--rounds 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edgekit.deploy import artifact, packing

MATMUL_OV = {"FullyConnected", "FullyConnectedCompressed", "FullyConnectedQuantizedLegacy", "Gemm", "MatMul"}


def shared(model: onnx.ModelProto) -> int:
    """Feed the DequantizeLinear of every second or third QuantizeLinear of one tensor from the first
    QuantizeLinear (its output, scale and zero point), and drop those QuantizeLinear; returns the nodes
    removed. Each matmul keeps its own DequantizeLinear: ONNX Runtime fuses a Q/DQ matmul only when the
    DequantizeLinear feeds that one node (a shared one made its matmuls run in float: 4x slower at b1)."""
    g = model.graph
    by_input, users = collections.defaultdict(list), collections.defaultdict(list)
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            by_input[n.input[0]].append(n)
        for i, x in enumerate(n.input):
            users[x].append((n, i))
    gone = set()
    for qs in by_input.values():
        keep = qs[0]
        for q in qs[1:]:
            for dq, _ in users[q.output[0]]:
                dq.input[0], dq.input[1] = keep.output[0], keep.input[1]
                if len(dq.input) > 2:
                    dq.input[2] = keep.input[2]
            gone.add(id(q))
    kept = [n for n in g.node if id(n) not in gone]
    del g.node[:]
    g.node.extend(kept)
    used = {x for n in g.node for x in n.input}
    inits = [t for t in g.initializer if t.name in used]  # the removed nodes' scales and zero points
    del g.initializer[:]
    g.initializer.extend(inits)
    return len(gone)


def feeds() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)

    def feed(b: int, s: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": rng.integers(1000, 20000, (b, s)),
            "attention_mask": np.ones((b, s), np.int64),
            "token_type_ids": np.zeros((b, s), np.int64),
        }

    return {"b1 s16": feed(1, 16), "b1 s128": feed(1, 128), "b32 s128": feed(32, 128)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowered", type=Path, default=Path("bench/work/op-profile/lowered"), help="a lowered artifact (edgekit lower)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov

    m = artifact.read_manifest(args.lowered)
    raw = (
        packing.model_bytes(args.lowered, m.model_file, m.settings.get("packed"))
        if m.settings.get("packed")
        else (args.lowered / m.model_file).read_bytes()
    )
    model = onnx.load_from_string(raw)
    removed = shared(model)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "per-linear.onnx").write_bytes(raw)
    onnx.save(model, str(tmp / "shared.onnx"))
    core = ov.Core()
    results: dict = {"lowered": str(args.lowered), "nodes_removed": removed, "columns": {}}
    for col, feed in feeds().items():
        runs = {}
        for name in ("per-linear", "shared"):
            path = str(tmp / f"{name}.onnx")
            ovm = core.read_model(path)
            if col == "b1 s128":  # one fixed length: a static shape, as a user shipping it would compile
                ovm.reshape({p.get_any_name(): list(feed[p.get_any_name()].shape) for p in ovm.inputs})
            req = core.compile_model(ovm, "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"}).create_infer_request()
            names = [p.get_any_name() for p in req.model_inputs]
            runs[f"openvino {name}"] = (lambda r=req, f={k: feed[k] for k in names}: r.infer(f), req)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            ort_feed = {i.name: feed[i.name] for i in sess.get_inputs()}
            runs[f"onnxruntime {name}"] = (lambda s=sess, f=ort_feed: s.run(None, f), None)
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                t = time.perf_counter()
                runs[k][0]()
                times[k].append((time.perf_counter() - t) * 1e3)
        row = {}
        for k, (_, req) in runs.items():
            row[k] = {"p50_ms": round(statistics.median(times[k][2:]), 3)}
            if req is not None:
                ops = collections.Counter()
                for p in req.get_profiling_info():
                    ops[p.node_type] += p.real_time.total_seconds() * 1e3
                mm = sum(v for t, v in ops.items() if t in MATMUL_OV)
                row[k] |= {"matmul_ms": round(mm, 3), "non_matmul_ms": round(sum(ops.values()) - mm, 3)}
        results["columns"][col] = row
        best = min(v["p50_ms"] for v in row.values())
        print(f"### {col}")
        for k, v in row.items():
            extra = f", last call: matmul {v['matmul_ms']} ms, non-matmul {v['non_matmul_ms']} ms" if "matmul_ms" in v else ""
            print(f"- {k}: p50 {v['p50_ms']} ms ({v['p50_ms'] / best:.2f}x best){extra}")
    print(f"nodes removed by sharing: {removed}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

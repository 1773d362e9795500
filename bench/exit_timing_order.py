"""Does the order of timed calls change what calibration reads for each exit? (bench/results/exits-shape-timing)

Calibration times the one-graph exit artifact forced out at each exit. Two orders, on the same inputs of varied
length, interleaved text by text with the single graph, median of ``--rounds``:

- ``back to back``: per input, every exit one after another (the order before aca993b): only the first of those
  calls sees a new input shape;
- ``pass per exit``: one pass over the inputs per exit (calibration's order now): every call follows a call at
  another input's length, as deployed batch-1 calls do.

It prints each exit's mean time as a ratio to the single graph's, per runtime, one runtime per process run.

    python bench/exit_timing_order.py CALIBRATION_GRAPH_DIR --runtime openvino-cpu
        (CALIBRATION_GRAPH_DIR: a calibration's ``graph`` folder, holding onnx/ and openvino-cpu/)
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from edgekit.build.exits.dev import by_exit, interleaved, timed


def runners(graph_dir: Path, runtime: str, threads: int):
    if runtime == "openvino-cpu":
        import openvino as ov

        core = ov.Core()
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        one = core.compile_model(graph_dir / "openvino-cpu" / "graph" / "model.xml", "CPU", cfg).create_infer_request()
        single = core.compile_model(graph_dir / "openvino-cpu" / "single" / "model.xml", "CPU", cfg).create_infer_request()
        return one.infer, single.infer
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    one = ort.InferenceSession(str(graph_dir / "onnx" / "exits.onnx"), so, providers=["CPUExecutionProvider"])
    single = ort.InferenceSession(str(graph_dir / "onnx" / "single.onnx"), so, providers=["CPUExecutionProvider"])
    return (lambda f: one.run(None, f)), (lambda f: single.run(None, f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph_dir", type=Path)
    ap.add_argument("--runtime", choices=["ort-cpu", "openvino-cpu"], default="openvino-cpu")
    ap.add_argument("--inputs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--exits", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    graph, single = runners(a.graph_dir, a.runtime, a.threads)
    rng = np.random.default_rng(0)
    feeds = []
    for n in rng.integers(20, 120, a.inputs):
        feeds.append(
            {
                "input_ids": rng.integers(1000, 20000, (1, n)).astype(np.int64),
                "attention_mask": np.ones((1, n), np.int64),
                "token_type_ids": np.zeros((1, n), np.int64),
            }
        )

    def forced(f, k):
        return f | {"exit_at": np.array(k, np.int64), "use_policy": np.array(False)}

    for f in feeds:  # warm-up: every shape seen once
        graph(forced(f, a.exits - 1))
        single(f)
    print(f"CPU: {platform.processor() or platform.machine()}; {a.runtime}; {a.inputs} inputs of 20-119 tokens")
    for rep in range(a.repeats):
        back, back_one = interleaved(  # the order before aca993b, as calibration ran it
            feeds, [lambda f: [timed(graph, forced(f, k)) for k in range(a.exits)], lambda f: timed(single, f)], a.rounds
        )
        per, per_one = by_exit(feeds, lambda f, k: graph(forced(f, k)), single, a.exits, a.rounds)  # calibration's own loop
        for name, t, one in (("back to back", back, back_one), ("pass per exit", per, per_one)):
            base = np.median(one, 0).mean()
            ratios = np.median(t, 0).mean(0) / base
            print(f"repeat {rep + 1} {name:>13}: single {base * 1000:.2f} ms; to each exit " + " ".join(f"{x:.3f}" for x in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the one exit graph costs on openvino-cpu beyond the layers it runs: forced out at exit k, against the model
pruned to k layers (no If, no other head), at static shapes. (bench/results/exits-ov-buckets)

Every model compiled with OpenVINO at [1, n] for each ``--lengths`` n (the single graph, the pruned models, and
calibration's timing graph forced out at each exit), one fixed input per length, interleaved call by call, median
of ``--calls``; printed as ratios to the single graph.

    python bench/exit_pruned_vs_graph.py HEADS CALIBRATION_GRAPH_ONNX_DIR [--lengths 16,64]
        (CALIBRATION_GRAPH_ONNX_DIR: a calibration's graph/onnx folder, holding exits.onnx and single.onnx)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import cpu_model  # noqa: E402

from edgekit.build.exits.model import load_exits
from edgekit.build.exits.onegraph import GRAPH_FILE
from edgekit.build.exits.segments import export_pruned

MAIN = ("input_ids", "attention_mask", "token_type_ids")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", type=Path)
    ap.add_argument("graph", type=Path)
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--calls", type=int, default=60)
    a = ap.parse_args()
    import openvino as ov

    model = load_exits(a.heads)
    layers = list(model.config.layers)
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}

    def compiled(path: Path, n: int):
        m = core.read_model(str(path))
        m.reshape({i.get_any_name(): [1, n] if i.get_any_name() in MAIN else i.get_partial_shape() for i in m.inputs})
        return core.compile_model(m, "CPU", cfg).create_infer_request()

    print(f"CPU: {cpu_model()}; exits at layers {layers}")
    with tempfile.TemporaryDirectory() as tmp:
        pruned = {}
        for layer in layers:
            m = export_pruned(model, layer, Path(tmp) / f"p{layer}")
            pruned[layer] = Path(tmp) / f"p{layer}" / m.model_file
        for n in (int(x) for x in a.lengths.split(",")):
            rng = np.random.default_rng(0)
            feed = {
                "input_ids": rng.integers(1000, 20000, (1, n)).astype(np.int64),
                "attention_mask": np.ones((1, n), np.int64),
                "token_type_ids": np.zeros((1, n), np.int64),
            }
            calls = {"single": (compiled(a.graph / "single.onnx", n), feed)}
            calls |= {f"pruned {layer}": (compiled(p, n), feed) for layer, p in pruned.items()}
            graph = compiled(a.graph / GRAPH_FILE, n)
            for k, layer in enumerate(layers):
                forced = {"exit_at": ov.Tensor(np.array(k, np.int64)), "use_policy": ov.Tensor(np.array(False))}
                calls[f"graph to exit {layer}"] = (graph, feed | forced)
            for _ in range(10):
                for req, f in calls.values():
                    req.infer(f)
            ts: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(a.calls):
                for k, (req, f) in calls.items():
                    t = time.perf_counter()
                    req.infer(f)
                    ts[k].append(time.perf_counter() - t)
            med = {k: float(np.median(v)) * 1000 for k, v in ts.items()}
            print(f"n={n}: single graph {med['single']:.2f} ms")
            for layer in layers:
                print(
                    f"  {layer} layers: pruned {med[f'pruned {layer}'] / med['single']:.3f}, "
                    f"graph to exit {med[f'graph to exit {layer}'] / med['single']:.3f}"
                )


if __name__ == "__main__":
    main()

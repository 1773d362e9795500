"""The exit artifact's forms side by side: the one graph, the segments, and the single graph, at batch 1 and 32.

One ``--form both`` export of HEADS under POLICY (the one graph and the segments in one artifact, so both run
the same weights and decisions), compiled per target; then the test texts (shuffled, seed 0):

- b1 real length: each text alone at its own length, through the one graph, the segments and the single graph;
- b32 s128: batches of 32 texts padded to 128 tokens, through the same three.

Interleaved call by call (the order alternates), a text's or batch's latency its median over ``--rounds``; the
figure is the mean, and every ratio is to the single graph of the same run. Exit decisions are the same in both
forms (compile checks it); what differs is what a batch costs: the one graph runs a batch until its last row
leaves, the segments drop rows as they exit.

    python bench/exit_forms.py HEADS --policy entropy=0.2 --data bench/data/debian-sections [--targets ort-cpu,openvino-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import cpu_model  # noqa: E402
from exit_deploy_run import timed  # noqa: E402

from edgekit.build.exits import steps
from edgekit.build.exits.segments import compile_exits
from edgekit.deploy import targets as tg
from edgekit.deploy.runtime import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", type=Path)
    ap.add_argument("--policy", required=True, help="NAME=VALUE or NAME=V1,V2,...")
    ap.add_argument("--data", type=Path, default=Path("bench/data/debian-sections"))
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--texts", type=int, default=128, help="test texts (shuffled, seed 0); a multiple of 32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("bench/work/exit_forms"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [json.loads(line)["text"] for line in (args.data / "test.jsonl").read_text().splitlines() if line.strip()]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[: args.texts]]
    steps.export(args.heads, args.policy, args.work / "onnx", form="both")
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "heads": str(args.heads), "policy": args.policy, "texts": len(rows), "targets": {}}
    print(f"CPU: {doc['cpu']} ({doc['cores']} cores); {len(rows)} texts, {args.policy}", flush=True)
    for target in [t for t in args.targets.split(",") if t]:
        spin = {"spinning": False} if target == "ort-cpu" else None
        compile_exits(args.work / "onnx", target, args.work / target, options=spin)
        res = {}
        with Predictor(args.work / target, options=tg.resolve_options(target, spin)) as p:
            ctl = p.exits
            name = ctl.output_name
            runs = {
                "single graph": lambda f, c=ctl, k=name: c.single.infer(f)[k],
                "one graph": lambda f, c=ctl, k=name: c.graph.infer(f)[k],
                # at batch 1 the controller would answer with the graph: the segments' own batch-1 path
                "segments": lambda f, c=ctl: c.infer(f, check=True) if len(f["attention_mask"]) > 1 else c._infer_one(f),
            }
            for shape, feeds in (
                ("b1 real length", [p.tokenizer([t]) for t in rows]),
                ("b32 s128", [p.tokenizer(rows[i : i + 32], pad_to=128) for i in range(0, len(rows) - 31, 32)]),
            ):
                mean, _ = timed(runs, feeds, args.rounds)
                res[shape] = {"mean_ms": mean, "ratio": {n: mean[n] / mean["single graph"] for n in runs}}
                if shape.startswith("b32"):
                    res[shape]["seq_per_s"] = {n: 32 * 1000 / v for n, v in mean.items()}
                print(f"{target} {shape}: " + ", ".join(f"{n} {mean[n]:.2f} ms ({res[shape]['ratio'][n]:.3f}x)" for n in runs), flush=True)
        doc["targets"][target] = res
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

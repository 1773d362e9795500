"""One exit export on openvino-cpu with dynamic shapes and with static shapes, against the single graph both ways.

The same exported point (``edgekit exits export --form graph``) compiled three times for openvino-cpu: with dynamic
shapes; in sequence buckets, ``seq_lens`` = the 8 lengths that pad the dev file's texts least (what ``data=dev``
picks); and at the one static length 128. Then every test text, batch 1, interleaved text by text (who goes first
alternates), ``--rounds`` passes, a text's time its median, through the exit graph and the single graph it ships:

- at its own length: dynamic shapes against the buckets;
- padded to 128 tokens (the b1 s128 column of bench/exit_deploy_run.py): dynamic shapes against [1, 128].

Ratios are to the faster single graph of the column: the model a user would otherwise ship.

    python bench/exit_ov_buckets.py EXPORT_DIR --data bench/data/debian-works-with [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import cpu_model  # noqa: E402
from exit_deploy_run import timed, write_json  # noqa: E402

from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.segments import compile_exits
from edgekit.deploy import artifact
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.shapes import least_padding
from edgekit.deploy.tokenizer import Tokenizer

TARGET = "openvino-cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="an exit export of the one-graph form (edgekit exits export)")
    ap.add_argument("--data", type=Path, required=True, help="folder with dev.jsonl (bucket lengths) and test.jsonl (report)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("bench/work/exit_ov_buckets"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    manifest = artifact.read_manifest(a.export)
    dev, _ = texts_and_labels(a.data / "dev.jsonl", None)
    dev_lengths = Tokenizer(a.export, manifest).lengths(dev)
    seq_lens = least_padding(dev_lengths, manifest.tokenizer.max_length, 8)
    compiles = {"dynamic": None, "buckets": {"seq_lens": seq_lens}, "static 128": {"seq_lens": [128]}}
    for name, options in compiles.items():
        compile_exits(a.export, TARGET, a.work / name.replace(" ", ""), options=options)
    texts, labels = texts_and_labels(a.data / "test.jsonl", list(manifest.source.labels or []))
    y = np.asarray(labels)
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "export": str(a.export), "data": str(a.data), "seq_lens": seq_lens}
    doc |= {"policy": manifest.exits.policy, "param": manifest.exits.param, "layers": manifest.exits.layers, "shapes": {}}
    print(f"CPU: {doc['cpu']} ({doc['cores']} cores); buckets {seq_lens}; {len(texts)} test texts", flush=True)
    with ExitStack() as stack:
        preds = {name: stack.enter_context(Predictor(a.work / name.replace(" ", ""))) for name in compiles}
        out_name = preds["dynamic"].exits.output_name
        for shape, pad, static in (("real length", None, "buckets"), ("s128", 128, "static 128")):
            pair = {"dynamic": preds["dynamic"], static: preds[static]}
            runs = {f"single graph, {n}": (lambda f, p=p: p.exits.single.infer(f)[out_name]) for n, p in pair.items()}
            runs |= {f"exits, {n}": p.run for n, p in pair.items()}
            feeds = [preds["dynamic"].tokenizer([t], pad_to=pad) for t in texts]
            for p in pair.values():
                p.exits.histogram[:] = 0
            mean, outs = timed(runs, feeds, a.rounds)
            base = min(v for n, v in mean.items() if n.startswith("single"))
            acc = {n: float(np.mean(np.concatenate(o).argmax(-1) == y)) for n, o in outs.items()}
            layers = {n: float(np.dot(p.exits.histogram, p.exits.layers) / max(1, p.exits.histogram.sum())) for n, p in pair.items()}
            row = {
                "tokens": float(np.mean([f["attention_mask"].sum() for f in feeds])),
                "mean_ms": mean,
                "ratio_to_faster_single": {n: v / base for n, v in mean.items()},
                "accuracy": acc,
                "mean_layers": layers,
            }
            doc["shapes"][shape] = row
            print(
                f"{shape} ({row['tokens']:.1f} real tokens): "
                + "; ".join(f"{n} {mean[n]:.3f} ms ({mean[n] / base:.3f}x, acc {acc[n]:.4f})" for n in runs)
                + "; layers "
                + " / ".join(f"{v:.2f}" for v in layers.values()),
                flush=True,
            )
    write_json(a.json, doc)


if __name__ == "__main__":
    main()

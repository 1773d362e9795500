"""Early exit on an embedding model, budgeted and measured on retrieval (recall@1 / MRR on query/doc pairs).

What a user of an embedding model runs, on the default model (all-MiniLM-L6-v2, as shipped):

1. ``edgekit exits train default --data TRAIN --eval DEV_PAIRS``: exit heads after every layer on a frozen
   backbone (each a projection initialised to identity, distilled towards the final embedding), the epoch
   kept by recall@1 on the dev pairs; TRAIN is unlabelled text (default: debian-works-with's training texts,
   split by source package like debian-synopsis, so no package of the pairs is in it);
2. ``edgekit exits calibrate HEADS --data DEV_PAIRS --target T --max-drop 1``: every policy scored on recall@1
   over the dev queries, queries and docs both embedded as the policy deploys them, checked on the 90 %
   bootstrap bound (over queries) of the drop, latency measured on T against the single graph;
3. ``edgekit exits export`` of the chosen point, compiled for T (the artifact ships the single graph too);
4. the test pairs (held out from every step above): every query and doc through the exit artifact and through
   its single graph, batch 1, interleaved text by text, each text at its own length and padded to 128 tokens
   (a text's latency is its median over ``--rounds`` passes); recall@1, recall@10 and MRR of each, ranking
   every test doc for every test query.

    python bench/exit_retrieval.py [--pairs bench/data/debian-synopsis] [--targets ort-cpu,openvino-cpu]
        [--work bench/work/exit_retrieval] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import cpu_model  # noqa: E402
from exit_deploy_run import chosen_row, run_chosen, timing_line, write_json  # noqa: E402

from edgekit.build.exits import steps
from edgekit.build.exits.train import TrainConfig
from edgekit.deploy import data
from edgekit.deploy.eval import retrieval
from edgekit.deploy.runtime import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="embedding checkpoint (default: the embedded all-MiniLM-L6-v2)")
    ap.add_argument("--pairs", type=Path, default=Path("bench/data/debian-synopsis"), help="folder with dev.jsonl and test.jsonl pairs")
    ap.add_argument("--train", type=Path, default=Path("bench/data/debian-works-with/train.jsonl"), help="unlabelled texts for the heads")
    ap.add_argument("--heads", type=Path, help="exit heads to use (default: trained into WORK/heads)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--targets", default="ort-cpu,openvino-cpu")
    ap.add_argument("--max-drop", type=float, default=1.0, help="recall@1 budget in points")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("bench/work/exit_retrieval"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "--queries-only",
        action="store_true",
        help="docs embedded once by the single graph (an index built offline); only queries take exits (calibrate --queries-only)",
    )
    args = ap.parse_args()
    dev, test = args.pairs / "dev.jsonl", args.pairs / "test.jsonl"
    heads = args.heads or args.work / "heads"
    if not (heads / "exits.json").exists():
        print(f"training exit heads into {heads} ({args.epochs} epochs, frozen backbone, epoch kept by dev recall@1) ...", flush=True)
        steps.train(args.model, args.train, heads, config=TrainConfig(epochs=args.epochs), resume=False, dev_file=dev)
    training = json.loads((heads / "exits.json").read_text()).get("training", {})
    queries, docs = data.read_pairs(test)
    texts, n = queries + docs, len(queries)
    doc = {"cpu": cpu_model(), "cores": os.cpu_count(), "model": args.model, "heads": str(heads), "pairs": str(args.pairs)}
    doc |= {"test_pairs": n, "max_drop": args.max_drop, "heads_dev": training.get("dev"), "targets": {}}
    doc["queries_only"] = args.queries_only
    print(f"CPU: {doc['cpu']} ({doc['cores']} cores); {n} test pairs ({2 * n} texts)", flush=True)
    for target in [t for t in args.targets.split(",") if t]:
        work = args.work / target
        cal = steps.calibrate(heads, dev, work / "calibration", target=target, max_drop=args.max_drop, queries_only=args.queries_only)
        row: dict = {"dev_recall@1": cal.base_quality, "per_exit_dev_recall@1": cal.per_exit_quality, "message": cal.message}
        c = cal.chosen
        if c is None:
            doc["targets"][target] = row | {"recommendation": cal.recommendation}
            print(f"{target}: {cal.recommendation}: {cal.message}", flush=True)
            continue
        spec, shapes, outputs = run_chosen(heads, c, target, work, queries if args.queries_only else texts, args.rounds)
        index = None
        if args.queries_only:  # the docs as an offline index: through the single graph the artifact ships
            with Predictor(work / "artifact") as p:
                index = p.predict(docs, batch=32, exits=False)
        row |= chosen_row(spec, c)
        row["interval"] = cal.interval.model_dump() if cal.interval is not None else None
        for shape, r in shapes.items():
            quality = {k: retrieval(o[:n], o[n:] if index is None else index) for k, o in outputs[shape].items()}
            drop = {m: 100 * (quality["single graph"][m] - quality["early exit"][m]) for m in quality["single graph"]}
            row[shape] = r | {"retrieval": quality, "drop_points": drop}
            q, s = quality["early exit"], quality["single graph"]
            line = f"recall@1 {q['recall@1']:.4f} vs {s['recall@1']:.4f}, MRR {q['mrr']:.4f} vs {s['mrr']:.4f}"
            print(timing_line(target, shape, spec, c.exits, r, line), flush=True)
        doc["targets"][target] = row
    write_json(args.json, doc)


if __name__ == "__main__":
    main()

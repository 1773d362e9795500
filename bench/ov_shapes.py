"""Which input shapes make a lowered W2E2A8 artifact fastest on openvino-cpu, against the INT8 peers.

OpenVINO's CPU plugin runs a model compiled for one static shape faster than the same model with
dynamic shapes (bench/compare: NNCF's INT8 IR at [1,128] against dynamic, b1 s128). edgekit's
sequence buckets compile one model per length with the batch left dynamic, and the default bucket
plan (p50/p90/max of the data plus powers of two) pads a 66-token text to 112. This bench times,
interleaved in one process on the same texts as bench/compare (b1 s128, b1 real length, b32 s128):

- the artifact with dynamic shapes, with the data's buckets, with a bucket every STEP tokens;
- the same buckets with the batch fixed too ([1, s] for single inputs, [-1, s] otherwise);
- the peers of bench/compare's columns: NNCF INT8 dynamic and static [1,128] (OpenVINO), the
  transformers-optimizer fused dynamic INT8 graph (ONNX Runtime).

Run after bench/compare.py has built its work directory:
    python bench/ov_shapes.py [--rounds 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from compare import DATA, cpu_description, pad_feed, read_jsonl, settle  # noqa: E402

from edgekit.deploy import artifact, packing  # noqa: E402
from edgekit.deploy.targets.shapes import fit_feed, pick_bucket, used_length  # noqa: E402
from edgekit.deploy.tokenizer import Tokenizer  # noqa: E402


class Shaped:
    """One IR compiled per bucket length; ``batch1`` also compiles [1, s] models for single inputs."""

    def __init__(self, core, model, config: dict[str, str], buckets: list[int] | None, batch1: bool, pad_id: int) -> None:
        import openvino as ov

        self.buckets, self.pad_id = buckets, pad_id
        self.dynamic = core.compile_model(model, "CPU", config)
        self.req = self.dynamic.create_infer_request()
        self.models: dict[tuple[int, int], Any] = {}
        for s in buckets or []:
            for b in [1, -1] if batch1 else [-1]:
                m = model.clone()
                m.reshape({p.get_any_name(): ov.PartialShape([b, s]) for p in m.inputs})
                c = core.compile_model(m, "CPU", config)
                self.models[(b, s)] = (c, c.create_infer_request())

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        compiled, req = self.dynamic, self.req
        if self.buckets:
            rows = next(iter(feed.values())).shape[0]
            length = used_length(feed, self.pad_id)
            if length <= self.buckets[-1]:
                s = pick_bucket(length, self.buckets)
                feed = fit_feed(feed, rows, s, self.pad_id)
                key = (1, s) if rows == 1 and (1, s) in self.models else (-1, s)
                compiled, req = self.models[key]
        return np.array(req.infer(feed)[compiled.outputs[0]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench/work/compare"))
    ap.add_argument("--artifact", default="edgekit-W2E2A8", help="a lowered artifact in --work")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--step", type=int, default=16)
    ap.add_argument("--buckets", type=lambda v: [int(x) for x in v.split(",")], default=[4, 6, 8], help="least-padding bucket counts")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort
    import openvino as ov

    root = args.work / args.artifact / "openvino-cpu"
    m = artifact.read_manifest(root)
    core = ov.Core()
    weights = packing.ir_weights(root, m.settings["packed"]) if m.settings.get("packed") else None
    xml = root / m.model_file
    model = core.read_model(xml.read_text(), ov.Tensor(weights)) if weights is not None else core.read_model(str(xml))
    config = dict(m.settings.get("config", {}))
    tok = Tokenizer(root, m)
    pad_id = m.tokenizer.pad_id
    data_buckets = [64, 112, 128, 256]  # bench/compare's buckets (p50/p90/max of its 256 training texts + powers of two)
    step = list(range(args.step, 129, args.step)) + [256]

    backends: dict[str, Any] = {}
    static128: set[str] = set()
    from edgekit.deploy.targets.openvino import OpenVinoSession
    from edgekit.deploy.targets.shapes import least_padding

    train = [json.loads(line)["text"] for line in (DATA / "train.jsonl").read_text().splitlines()[:256]]
    train_lengths = tok.lengths(train)  # the texts bench/compare compiles its buckets from

    def session(buckets: list[int] | None, cfg: dict[str, str] = config) -> Any:
        sess = OpenVinoSession(xml, cfg, buckets=buckets, pad_id=pad_id, packed=m.settings.get("packed"))
        return lambda feed: sess.infer(feed)[sess.output_names[0]]

    backends["edgekit dynamic"] = session(None)
    backends["edgekit buckets 64,112,128,256, batch dynamic (before)"] = Shaped(core, model, config, data_buckets, False, pad_id).run
    for k in args.buckets:
        lens = least_padding(train_lengths, m.tokenizer.max_length, k)
        backends[f"edgekit {k} least-padding buckets {','.join(map(str, lens))}"] = session(lens)
    backends[f"edgekit buckets every {args.step}"] = session(step)
    lens = least_padding(train_lengths, m.tokenizer.max_length, args.buckets[-1])
    backends[f"edgekit {args.buckets[-1]} least-padding buckets, bf16"] = session(lens, {**config, "INFERENCE_PRECISION_HINT": "bf16"})
    user = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    for name, sub, static in (("NNCF INT8 dynamic", "ov-nncf", False), ("NNCF INT8 static [1,128]", "ov-nncf-static128", True)):
        c = core.compile_model(str(args.work / sub / "model.xml"), "CPU", user)
        r = c.create_infer_request()
        backends[name] = lambda feed, r=r, o=c.outputs[0]: np.array(r.infer(feed)[o])
        if static:
            static128.add(name)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(args.work / "ort-fused-dynamic" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    backends["ORT INT8 dynamic + fusions"] = lambda feed: sess.run(None, feed)[0]

    labels = list(m.source.labels)
    dev_texts = read_jsonl(DATA / "dev.jsonl", labels)[0]
    lengths = tok.lengths(dev_texts)
    long128 = [t for t, n in zip(dev_texts, lengths) if n >= 128]
    long128 = (long128 * (1 + 32 // max(1, len(long128))))[: max(32, len(long128))]
    real = [tok([t]) for t in dev_texts[:: max(1, len(dev_texts) // 120)][:120]]
    feeds = {"b1 s128": [tok([t], pad_to=128) for t in long128[:32]], "b1 real": real, "b32": [tok(long128[:32], pad_to=128)]}
    runs = {"b1 s128": 15, "b1 real": 40, "b32": 2}
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in feeds} for n in backends}

    def call(name: str, key: str, feed: dict) -> float:
        fn = backends[name]
        t = time.perf_counter()
        if name in static128:
            if key == "b32":
                one = {k: v[:1] for k, v in feed.items()}
                for _ in range(feed["input_ids"].shape[0]):
                    fn(one)
            else:
                fn(pad_feed(feed, 128, pad_id))
        else:
            fn(feed)
        return time.perf_counter() - t

    for name in backends:  # warm-up: every shape once
        for key, fl in feeds.items():
            for f in fl if key == "b1 real" else fl[:2]:
                call(name, key, f)
    names = list(backends)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for key, fl in feeds.items():
            n = runs[key]
            for name in order:
                settle(lambda f, name=name, key=key: call(name, key, f), fl)
                for i in range(n):
                    times[name][key].append(call(name, key, fl[(r * n + i) % len(fl)]))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)

    rows = {}
    for name in names:
        t = times[name]
        rows[name] = {
            "b1_s128_p50_ms": statistics.median(t["b1 s128"]) * 1e3,
            "b1_real_mean_ms": statistics.mean(t["b1 real"]) * 1e3,
            "b32_seq_per_s": 32 * len(t["b32"]) / sum(t["b32"]),
        }
    peers = [n for n in names if not n.startswith("edgekit")]
    best = {
        "b1_s128_p50_ms": min(rows[n]["b1_s128_p50_ms"] for n in peers),
        "b1_real_mean_ms": min(rows[n]["b1_real_mean_ms"] for n in peers),
        "b32_seq_per_s": max(rows[n]["b32_seq_per_s"] for n in peers),
    }
    cpu = cpu_description()
    lines = [
        f"# {args.artifact} on openvino-cpu: input shapes ({cpu}, openvino {ov.get_version()}, onnxruntime {ort.__version__})",
        "",
        f"{args.rounds} interleaved rounds; real text: {statistics.mean(f['input_ids'].shape[1] for f in real):.1f} tokens on average"
        " (120 dev texts); x: against the best peer of the column (>1 is better).",
        "",
        "| backend | b1 s128 p50 ms | b1 real mean ms | b32 seq/s | x s128 | x real | x b32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = rows[name]
        lines.append(
            f"| {name} | {r['b1_s128_p50_ms']:.2f} | {r['b1_real_mean_ms']:.2f} | {r['b32_seq_per_s']:.1f} | "
            f"{best['b1_s128_p50_ms'] / r['b1_s128_p50_ms']:.2f} | {best['b1_real_mean_ms'] / r['b1_real_mean_ms']:.2f} | "
            f"{r['b32_seq_per_s'] / best['b32_seq_per_s']:.2f} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "machine": platform.machine(), "rows": rows, "best": best}, indent=1))
        args.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The early-exit workflow as library calls (the CLI's ``edgekit exits ...`` commands).

train -> calibrate (on a dev file, latency measured on a target) -> export segments with the
chosen policy -> compile per target; or prune to a static depth cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments, torch_exits
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.load import load
from edgekit.deploy import data
from edgekit.deploy.exits.policies import make
from edgekit.errors import DataError


def _texts_and_labels(path: str | Path, labels: list[str] | None, need_labels: bool = False) -> tuple[list[str], list[int] | None]:
    kind = data.kind(path)
    if kind == "labeled" and labels:
        d = data.read_labeled(path, labels)
        return d.texts, d.labels
    if need_labels:
        raise DataError(
            f"{path}: no 'label' field, but supervised calibration needs labels",
            hint="add labels, or pass --unsupervised to score agreement with the final exit",
        )
    return data.read_texts(path), None


def train(
    checkpoint: str | Path,
    data_file: str | Path,
    out: str | Path,
    *,
    layers: list[int] | None = None,
    config: TrainConfig = TrainConfig(),
    resume: bool = True,
    progress=None,
) -> dict:
    """Exit heads for a trained checkpoint, trained on ``data_file`` (labels optional)."""
    model = MultiExitModel(load(checkpoint), layers)
    texts, labels = _texts_and_labels(data_file, list(model.encoder.info.labels or []))
    report = train_heads(model, texts, labels, Path(out), config, resume=resume, progress=progress)
    model.save(Path(out), {"training": report, "data": str(data_file)})
    return report


def calibrate(
    heads: str | Path,
    data_file: str | Path,
    out: str | Path,
    *,
    target: str | None = None,
    max_drop: float = 1.0,
    max_latency_ms: float | None = None,
    policies: list[str] | None = None,
    unsupervised: bool = False,
    latency_texts: int = 100,
    rounds: int = 3,
) -> cal.CalibrationReport:
    """Sweep every policy on ``data_file``; with ``target``, latencies are measured there, per length
    bucket, beside the single graph of the same model (what ships without exits)."""
    model = load_exits(heads)
    out = Path(out)
    texts, labels = _texts_and_labels(
        data_file,
        None if unsupervised else list(model.encoder.info.labels or []),
        need_labels=model.task == "classifier" and not unsupervised,
    )
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    exits = torch_exits(model, feed)
    lengths = feed["attention_mask"].sum(1)
    layers = list(model.config.layers)
    timing = measure_target(model, texts, lengths, target, out, latency_texts, rounds) if target else None
    y = np.asarray(labels) if labels is not None else None
    base, points = cal.sweep(exits, layers, model.task, y, policies, lengths=lengths, timing=timing)
    per_exit = [cal.quality(model.task, e["output"], exits[-1]["output"], y) for e in exits]
    extra: dict = {}
    single_ms = None
    if timing is not None:
        rows_b = cal.bucket_of(lengths, timing.buckets)
        single_ms = float(timing.single_ms[rows_b].mean())
        seg = np.diff(timing.cum_ms, axis=1, prepend=0.0)
        extra = {
            "segment_latency_ms": seg[rows_b].mean(0).tolist(),
            "single_graph_latency_ms": single_ms,
            "length_buckets": [
                cal.LengthBucket(
                    up_to=up,
                    dev_texts=int((rows_b == b).sum()),
                    latency_texts=timing.texts[b],
                    single_graph_ms=float(timing.single_ms[b]),
                    segments_ms=seg[b].tolist(),
                    no_checks_ms=float(timing.chain_ms[b]),
                )
                for b, up in enumerate(timing.buckets)
            ],
        }
    chosen = cal.choose(base, points, max_drop=max_drop, max_latency_ms=max_latency_ms, single_ms=single_ms)
    rec, layer, message = cal.recommend(chosen, points, per_exit, layers, max_drop, single_ms, target)
    if chosen is not None and chosen.check is not None:
        extra["length_plan"] = {"buckets": timing.buckets, "check": chosen.check}
    report = cal.CalibrationReport(
        base_quality=base,
        layers=layers,
        per_exit_quality=per_exit,
        points=points,
        chosen=chosen,
        recommendation=rec,
        message=message,
        prune_layer=layer,
        data=str(data_file),
        target=target,
        max_drop=max_drop,
        max_latency_ms=max_latency_ms,
        heads=str(heads),
        **extra,
    )
    files = cal.save(report, out)
    return report.model_copy(update={"files": [str(f) for f in files]})


def _pick(lengths: np.ndarray, buckets: list[int], n: int) -> list[int]:
    """Up to about ``n`` text indices (fixed seed), every length bucket with texts getting at least a few."""
    order = np.random.default_rng(0).permutation(len(lengths))
    rows_b = cal.bucket_of(lengths[order], buckets)
    picked = []
    for b in range(len(buckets)):
        idx = order[rows_b == b]
        picked += idx[: max(3, round(n * len(idx) / len(lengths)))].tolist() if len(idx) else []
    return picked


def measure_target(model, texts: list[str], lengths: np.ndarray, target: str, out: Path, n: int = 100, rounds: int = 3) -> cal.Timing:
    """Batch-1 latency on ``target`` per length bucket: the segments (to the end of each, exit checks
    included) and the single graph of the same model (the one the exit artifact ships, compiled
    with it), timed on the same texts at their own lengths, interleaved text by text (median over
    ``rounds``). Without exit checks the deployed controller runs that single graph, so the
    no-checks latency (``chain_ms``) is the single graph's."""
    import time

    from edgekit.deploy import targets
    from edgekit.deploy.runtime import Predictor

    never = make("entropy", 0.0) if model.task == "classifier" else make("learned", 1.0)
    art = out / "segments"
    export_segments(model, never, art / "onnx")
    compile_exits(art / "onnx", target, art / target)
    fields = targets.get(target).options_model.model_fields
    options = {"spinning": False} if "spinning" in fields else None  # as compile_exits: idle sessions' threads must not spin
    opts = targets.resolve_options(target, options)
    max_len = int(lengths.max())
    buckets = [b for b in cal.BUCKETS if b < max_len] + [next((b for b in cal.BUCKETS if b >= max_len), max_len)]
    picked = _pick(lengths, buckets, n)
    with Predictor(art / target, options=opts) as seg:
        ctl = seg.exits
        one = ctl.single
        feeds = [seg.tokenizer([texts[i]]) for i in picked]
        for f in feeds[:5]:  # warm-up
            one.infer(f), ctl.timed_chain(f)
        t_one = np.zeros((rounds, len(feeds)))
        t_cum = np.zeros((rounds, len(feeds), len(model.config.layers)))
        for r in range(rounds):
            for i, f in enumerate(feeds):
                if (i + r) % 2:
                    t_cum[r, i] = ctl.timed_chain(f)
                t = time.perf_counter()
                one.infer(f)
                t_one[r, i] = time.perf_counter() - t
                if not (i + r) % 2:
                    t_cum[r, i] = ctl.timed_chain(f)
    rows_b = cal.bucket_of(lengths[picked], buckets)
    keep = [b for b in range(len(buckets)) if (rows_b == b).any()]
    med = lambda a: np.median(a, axis=0) * 1000  # noqa: E731
    one_ms, cum_ms = med(t_one), med(t_cum)
    return cal.Timing(
        buckets=[buckets[b] for b in keep],
        cum_ms=np.stack([cum_ms[rows_b == b].mean(0) for b in keep]),
        chain_ms=np.array([one_ms[rows_b == b].mean() for b in keep]),
        single_ms=np.array([one_ms[rows_b == b].mean() for b in keep]),
        texts=[int((rows_b == b).sum()) for b in keep],
    )


def measure(artifact_dir: str | Path, texts: list[str]) -> list[float]:
    """Per-segment batch-1 latency (exit checks included) of a compiled early-exit artifact on real texts."""
    from edgekit.deploy.exits.controller import segment_latencies
    from edgekit.deploy.runtime import Predictor

    with Predictor(artifact_dir) as pred:
        feeds = [pred.tokenizer([t]) for t in texts]
        segment_latencies(pred.exits, feeds[:5], rounds=1)  # warm-up
        return segment_latencies(pred.exits, feeds)


def export(
    heads: str | Path,
    policy: str,
    out: str | Path,
    *,
    name: str | None = None,
    calibration: str | Path | cal.CalibrationReport | None = None,
    exits: list[int] | None = None,
):
    """Segments under ``policy``, plus the single graph for inputs that check no exit.

    From ``calibration`` (a report or its calibration.json; default HEADS/calibration/calibration.json),
    when it chose this very policy: the length plan (which sequence lengths check exits) and the
    exits its operating point keeps (the others are dropped, merging their segments). ``exits``
    (layers, e.g. [2, 4]) overrides the calibration's choice; the last layer's exit is always kept.
    """
    from edgekit.deploy.exits.policies import parse

    model = load_exits(heads)
    pol = parse(policy, model.task)
    chosen = from_calibration(pol, calibration or Path(heads) / "calibration" / "calibration.json")
    kept = chosen.pop("exits", None)
    layers = exits if exits is not None else kept
    return export_segments(model, pol, out, name=name, extra=chosen or None, layers=layers)


def from_calibration(policy, calibration: str | Path | cal.CalibrationReport) -> dict:
    """What a calibration chose for ``policy`` when its chosen point is that policy: ``length_plan``
    and ``exits`` (the kept exit layers; absent: all), as present; else {}."""
    import json

    if isinstance(calibration, (str, Path)):
        path = Path(calibration)
        if not path.exists():
            return {}
        doc = json.loads(path.read_text())
    else:
        doc = {
            "chosen": {"policy": calibration.chosen.policy, "param": calibration.chosen.param} if calibration.chosen else None,
            "length_plan": calibration.length_plan,
            "exits": getattr(calibration, "exits", None),
        }
    chosen = doc.get("chosen") or {}
    if chosen.get("policy") != policy.name or chosen.get("param") != policy.param:
        return {}
    return {k: doc[k] for k in ("length_plan", "exits") if doc.get(k)}


def length_plan_for(policy, calibration: str | Path) -> dict | None:
    """``{"length_plan": ...}`` from a calibration.json whose chosen point is ``policy``, else None."""
    plan = from_calibration(policy, calibration).get("length_plan")
    return {"length_plan": plan} if plan else None


def prune(heads: str | Path, layer: int, out: str | Path, *, name: str | None = None):
    return export_pruned(load_exits(heads), layer, out, name=name)


def depth_for(calibration, max_drop: float) -> int:
    """The shallowest exit whose accuracy alone stays within ``max_drop`` points (a calibration.json dict or report)."""
    return cal.shallowest_within(calibration["per_exit_quality"], calibration["layers"], max_drop)


def prune_layer(layer: int | None, calibration: str | Path | None, max_drop: float) -> int:
    """The layer to cut at: the one given, or the shallowest within ``max_drop`` of a calibration.json."""
    import json

    from edgekit.errors import ConfigError

    if layer is not None:
        return layer
    if calibration is None:
        raise ConfigError("give --layer or --calibration", hint="e.g. --layer 4")
    try:
        doc = json.loads(Path(calibration).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{calibration}: not a readable calibration.json ({err})", hint="give the file 'edgekit exits calibrate' wrote"
        ) from err
    return depth_for(doc, max_drop)


__all__ = ["train", "calibrate", "measure", "export", "prune", "prune_layer", "compile_exits", "depth_for"]

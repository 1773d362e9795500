"""The early-exit workflow as library calls (the CLI's ``edgekit exits ...`` commands).

train -> calibrate (on a dev file, latency measured on a target) -> export segments with the
chosen policy -> compile per target; or prune to a static depth cut.
"""

from __future__ import annotations

from dataclasses import asdict
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
) -> dict:
    """Sweep every policy on ``data_file``; with ``target``, latencies are measured there."""
    model = load_exits(heads)
    out = Path(out)
    texts, labels = _texts_and_labels(
        data_file,
        None if unsupervised else list(model.encoder.info.labels or []),
        need_labels=model.task == "classifier" and not unsupervised,
    )
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    exits = torch_exits(model, feed)
    seg_ms = None
    if target:
        art = out / "segments"
        export_segments(
            model, make("entropy" if model.task == "classifier" else "similarity", 0.0 if model.task == "classifier" else 1.0), art / "onnx"
        )
        compile_exits(art / "onnx", target, art / target)
        seg_ms = measure(art / target, texts[:latency_texts])
    y = np.asarray(labels) if labels is not None else None
    base, points = cal.sweep(exits, list(model.config.layers), model.task, y, policies, seg_ms)
    chosen = cal.choose(base, points, max_drop=max_drop, max_latency_ms=max_latency_ms)
    per_exit = [cal.quality(model.task, e["output"], exits[-1]["output"], y) for e in exits]
    files = cal.save(
        out,
        base,
        points,
        chosen,
        list(model.config.layers),
        seg_ms,
        {
            "data": str(data_file),
            "target": target,
            "max_drop": max_drop,
            "max_latency_ms": max_latency_ms,
            "heads": str(heads),
            "per_exit_quality": per_exit,
        },
    )
    return {
        "base": base,
        "chosen": asdict(chosen),
        "files": [str(f) for f in files],
        "segment_latency_ms": seg_ms,
        "per_exit_quality": per_exit,
        "layers": list(model.config.layers),
        "points": [asdict(p) for p in points],
    }


def measure(artifact_dir: str | Path, texts: list[str]) -> list[float]:
    """Per-segment batch-1 latency of a compiled early-exit artifact on real texts."""
    from edgekit.deploy.exits.controller import segment_latencies
    from edgekit.deploy.runtime import Predictor

    with Predictor(artifact_dir) as pred:
        feeds = [pred.tokenizer([t]) for t in texts]
        segment_latencies(pred.exits, feeds[:5], rounds=1)  # warm-up
        return segment_latencies(pred.exits, feeds)


def export(heads: str | Path, policy: str, out: str | Path, *, name: str | None = None):
    from edgekit.deploy.exits.policies import parse

    model = load_exits(heads)
    return export_segments(model, parse(policy, model.task), out, name=name)


def prune(heads: str | Path, layer: int, out: str | Path, *, name: str | None = None):
    return export_pruned(load_exits(heads), layer, out, name=name)


def depth_for(calibration: dict, max_drop: float) -> int:
    """The shallowest exit whose accuracy alone stays within ``max_drop`` points."""
    quality = calibration["per_exit_quality"]
    layers = calibration.get("layers")
    best = quality[-1]
    for q, layer in zip(quality, layers):
        if (best - q) * 100 <= max_drop:
            return layer
    return layers[-1]


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

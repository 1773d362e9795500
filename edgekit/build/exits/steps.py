"""The early-exit workflow as library calls (the CLI's ``edgekit exits ...`` commands).

train -> calibrate (on a dev file, latency measured on a target:
:func:`edgekit.build.exits.operating.calibrate`) -> export segments with the chosen policy ->
compile per target; or prune to a static depth cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.build.exits.dev import measure_target, texts_and_labels
from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.operating import calibrate
from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments, subset
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.load import load
from edgekit.errors import ConfigError, DataError


def train(
    checkpoint: str | Path,
    data_file: str | Path,
    out: str | Path,
    *,
    layers: list[int] | None = None,
    head_pooling: str | None = None,
    config: TrainConfig = TrainConfig(),
    resume: bool = True,
    progress=None,
    dev_file: str | Path | None = None,
    unlabeled_file: str | Path | None = None,
) -> dict:
    """Exit heads for a trained checkpoint, trained on ``data_file`` (labels optional); with ``dev_file``,
    the epoch kept is chosen on it (:func:`edgekit.build.exits.train.train_heads`). ``unlabeled_file``:
    more texts the heads distil the final layer on, without a label loss (a few hundred labelled texts
    teach a head little about where it agrees with the final layer; in-domain text without labels does)."""
    from edgekit.build.exits.train import UNLABELED
    from edgekit.build.quant.augment import read_unlabeled

    extra = read_unlabeled(unlabeled_file) if unlabeled_file is not None else []  # a bad file fails before the model loads
    model = MultiExitModel(load(checkpoint), layers, head_pooling)
    names = list(model.encoder.info.labels or [])
    texts, labels = texts_and_labels(data_file, names)
    seen = set(texts)
    extra = [t for t in dict.fromkeys(extra) if t not in seen]  # a training text is not distilled twice
    texts = texts + extra
    labels = list(labels) + [UNLABELED] * len(extra) if labels is not None else None
    # an embedding model's dev pairs are scored as calibration scores them: recall@1
    dev = texts_and_labels(dev_file, names, retrieval=model.task == "embedding") if dev_file is not None else None
    if dev is not None and not dev[0]:
        raise DataError(f"{dev_file}: no texts", hint="give a dev file with at least one text, or leave out --eval")
    report = train_heads(model, texts, labels, Path(out), config, resume=resume, progress=progress, dev=dev)
    if unlabeled_file is not None:
        report |= {"unlabeled": len(extra), "unlabeled_file": str(unlabeled_file)}
    model.save(Path(out), {"training": report, "data": str(data_file)})
    return report


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
    form: str | None = None,
):
    """The exit artifact under ``policy`` (``form``: ``graph``, the exits decided inside one graph, or
    ``segments``; default: the form calibration timed, else ``graph``), plus the single graph for
    inputs that check no exit.

    From ``calibration`` (a report or its calibration.json; default HEADS/calibration/calibration.json),
    when it chose this very policy: the length plan (which sequence lengths check exits) and the
    exits its operating point keeps (the others are dropped, merging their segments). ``exits``
    (layers, e.g. [2, 4]) overrides the calibration's choice; the last layer's exit is always kept.
    A per-exit threshold vector must have one value per kept exit before the last (ConfigError).
    """
    from edgekit.deploy.exits.policies import parse

    model = load_exits(heads)
    pol = parse(policy, model.task)
    if isinstance(calibration, (str, Path)) and not Path(calibration).is_file():
        raise ConfigError(f"{calibration}: no such calibration.json", hint="give the file 'edgekit exits calibrate' wrote")
    chosen = from_calibration(pol, calibration or Path(heads) / "calibration" / "calibration.json")
    kept = chosen.pop("exits", None)
    form = form or chosen.pop("form", None) or "graph"
    chosen.pop("form", None)
    layers = exits if exits is not None else kept
    check_thresholds(pol, list(subset(model, layers).config.layers))
    return export_segments(model, pol, out, name=name, extra=chosen or None, layers=layers, form=form)


def check_thresholds(policy, layers: list[int]) -> None:
    """A per-exit vector needs one value per kept exit before the last (``layers``: the kept exits)."""
    if policy.per_exit and len(policy.param) != len(layers) - 1:
        raise ConfigError(
            f"policy {policy.name}: {len(policy.param)} thresholds given, {len(layers) - 1} expected "
            f"(one per exit before the last of the kept exits at layers {','.join(map(str, layers))})",
            hint=f"give {len(layers) - 1} comma-separated values, or one value for every exit",
        )


def from_calibration(policy, calibration: str | Path | cal.CalibrationReport) -> dict:
    """What a calibration chose for ``policy`` when its chosen point is that policy: ``length_plan``,
    ``exits`` (the kept exit layers; absent: all) and ``form`` (the artifact it timed), as present; else {}."""
    import json

    if isinstance(calibration, (str, Path)):
        path = Path(calibration)
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not a calibration.json ({err})", hint="give the file 'edgekit exits calibrate' wrote") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: not a calibration.json (not a JSON object)", hint="give the file 'edgekit exits calibrate' wrote")
    else:
        doc = {
            "chosen": {"policy": calibration.chosen.policy, "param": calibration.chosen.param} if calibration.chosen else None,
            "length_plan": calibration.length_plan,
            "exits": getattr(calibration, "exits", None),
            "form": getattr(calibration, "form", None),
        }
    chosen = doc.get("chosen") or {}
    if chosen.get("policy") != policy.name or not same_param(chosen.get("param"), policy.param):
        return {}
    return {k: doc[k] for k in ("length_plan", "exits", "form") if doc.get(k)}


def same_param(a, b) -> bool:
    """Whether two policy parameters are the same point: a one-value vector is that value, and values
    agree to the 6 significant digits a ``NAME=V1,V2`` spec keeps."""
    if a is None or b is None:
        return False
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-12))


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


__all__ = [
    "train",
    "calibrate",
    "texts_and_labels",
    "measure_target",
    "measure",
    "export",
    "prune",
    "prune_layer",
    "compile_exits",
    "depth_for",
]

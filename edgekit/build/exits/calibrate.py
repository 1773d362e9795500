"""Calibration: sweep each exit policy's parameter on a dev set and pick an operating point.

All exits' outputs are computed once; each policy is then *simulated* with the same numpy
code the deployed controller runs. With a target, latency is measured there, per length
bucket (token lengths up to 16, 32, 64, 128, ...), beside the single graph of the same model
on the same texts (what the user would ship without exits). A point's expected latency is,
per bucket, ``sum_k P(exit at k) * (measured time to the end of segment k, exit checks
included)``, or the segments run back to back without checks where that is cheaper (the
point's length plan), weighted by the dev texts in each bucket. A point no faster than the
single graph is never chosen; when none is, the report recommends the depth cut or no exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.deploy.exits.policies import EXIT_POLICIES, make, simulate
from edgekit.errors import ConfigError

BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Point:
    policy: str
    param: float
    quality: float  # accuracy (labels), agreement with the final exit (no labels), or cosine fidelity (embeddings)
    mean_layers: float
    exit_histogram: list[int]
    expected_latency_ms: float | None
    latency_ratio: float | None = None  # expected latency / the single graph's, both measured on the target
    check: list[bool] | None = None  # per length bucket: exits checked (False: that bucket runs every segment, no checks)


@dataclass(frozen=True)
class Timing:
    """Measured on the target, batch 1, per length bucket (``buckets``: upper bounds, ascending).

    ``cum_ms[b, k]``: from the call's start to the end of segment k, exit checks included;
    ``chain_ms[b]``: all segments back to back without exit checks; ``single_ms[b]``: the
    single graph. ``texts[b]``: how many texts each mean is over."""

    buckets: list[int]
    cum_ms: np.ndarray
    chain_ms: np.ndarray
    single_ms: np.ndarray
    texts: list[int]


def bucket_of(lengths: np.ndarray, buckets: list[int] | tuple[int, ...]) -> np.ndarray:
    """Bucket index of each token length (past the last bound: the last bucket)."""
    return np.minimum(np.searchsorted(np.asarray(buckets), lengths), len(buckets) - 1)


class LengthBucket(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    up_to: int
    dev_texts: int
    latency_texts: int
    single_graph_ms: float
    segments_ms: list[float]  # per segment, exit check included
    no_checks_ms: float  # all segments back to back, no exit checks


class CalibrationReport(BaseModel):
    """What ``edgekit exits calibrate`` measured and chose (written as calibration.json).

    ``report["base"]`` and the other keys of the former dict still read (``__getitem__``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    base_quality: float
    layers: list[int]
    per_exit_quality: list[float]
    points: list[Point]
    chosen: Point | None  # None: no policy is faster than the single graph (see recommendation)
    recommendation: Literal["exits", "prune", "none"]
    message: str
    prune_layer: int | None = None
    segment_latency_ms: list[float] | None = None  # dev-weighted mean per segment, exit check included
    single_graph_latency_ms: float | None = None  # dev-weighted mean of the single graph, same texts
    length_buckets: list[LengthBucket] | None = None
    length_plan: dict | None = None  # the chosen point's {"buckets", "check"}: the controller's length plan
    data: str = ""
    target: str | None = None
    max_drop: float = 1.0
    max_latency_ms: float | None = None
    heads: str = ""
    files: list[str] = []

    ALIASES: ClassVar[dict[str, str]] = {"base": "base_quality"}

    def __getitem__(self, key: str) -> Any:
        """The former dict's keys (``base``, ``chosen``, ``layers``...), as JSON values."""
        return self.model_dump(mode="json")[self.ALIASES.get(key, key)]


def quality(task: str, outputs: np.ndarray, final: np.ndarray, labels: np.ndarray | None) -> float:
    if task == "classifier":
        target = labels if labels is not None else final.argmax(-1)
        return float(np.mean(outputs.argmax(-1) == target))
    num = (outputs * final).sum(-1)
    den = np.linalg.norm(outputs, axis=-1) * np.linalg.norm(final, axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def sweep(
    exits: list[dict[str, np.ndarray]],
    layers: list[int],
    task: str,
    labels: np.ndarray | None = None,
    policies: list[str] | None = None,
    segment_ms: list[float] | None = None,
    *,
    lengths: np.ndarray | None = None,
    timing: Timing | None = None,
) -> tuple[float, list[Point]]:
    """(quality of the model without exits, every policy x parameter point).

    With ``timing`` (and each dev text's token ``lengths``) a point gets its length plan: exits are
    checked in a bucket only where that is expected to be faster than running every segment
    without checks; its quality, histogram and latency are those of the point as deployed."""
    final = exits[-1]["output"]
    base = quality(task, final, final, labels)
    names = policies or [n for n, p in EXIT_POLICIES.items() if task in p.tasks]
    cum = np.cumsum(segment_ms) if segment_ms is not None else None
    last = len(layers) - 1
    rows_b = bucket_of(np.asarray(lengths), timing.buckets) if timing is not None else None
    points = []
    for name in names:
        for param in EXIT_POLICIES[name].grid:
            exit_at, out = simulate(make(name, param, task), exits)
            latency, ratio, check = None, None, None
            if timing is not None:
                on = timing.cum_ms[rows_b, exit_at]  # each row's time with exits checked
                off = timing.chain_ms[rows_b]
                # a bucket no dev text falls in: judged with every row's exit as if it had that length
                check = [
                    bool(timing.cum_ms[b, exit_at[rows_b == b] if (rows_b == b).any() else exit_at].mean() < timing.chain_ms[b])
                    for b in range(len(timing.buckets))
                ]
                checked = np.asarray(check)[rows_b]
                exit_at = np.where(checked, exit_at, last)
                out = np.where(checked[:, None], out, final)
                latency = float(np.where(checked, on, off).mean())
                ratio = latency / float(timing.single_ms[rows_b].mean())
            elif cum is not None:
                latency = float(cum[exit_at].mean())
            points.append(
                Point(
                    policy=name,
                    param=float(param),
                    quality=quality(task, out, final, labels),
                    mean_layers=float(np.mean(np.asarray(layers)[exit_at])),
                    exit_histogram=np.bincount(exit_at, minlength=len(layers)).tolist(),
                    expected_latency_ms=latency,
                    latency_ratio=ratio,
                    check=check,
                )
            )
    return base, points


def choose(
    base: float,
    points: list[Point],
    *,
    max_drop: float | None = 1.0,
    max_latency_ms: float | None = None,
    single_ms: float | None = None,
) -> Point | None:
    """The fastest point within ``max_drop`` points of ``base`` (or the most accurate under a latency target).

    With ``single_ms`` (the single graph's measured latency) only points faster than it count;
    None when there is none, or when the single graph meets the latency target and no point
    is at least as accurate."""
    speed = (lambda p: p.expected_latency_ms) if all(p.expected_latency_ms is not None for p in points) else (lambda p: p.mean_layers)
    faster = points if single_ms is None else [p for p in points if p.expected_latency_ms < single_ms]
    if max_latency_ms is not None:
        if any(p.expected_latency_ms is None for p in points):
            raise ConfigError("a latency target needs measured segment latencies", hint="calibrate with --target to measure them")
        ok = [p for p in faster if p.expected_latency_ms <= max_latency_ms]
        single_ok = single_ms is not None and single_ms <= max_latency_ms
        if not ok and not single_ok:
            also = f", the single graph {single_ms:.2f} ms" if single_ms is not None else ""
            raise ConfigError(
                f"no operating point meets {max_latency_ms} ms (fastest: {min(speed(p) for p in points):.2f} ms{also})",
                hint="raise the latency target",
            )
        best = max(ok, key=lambda p: (p.quality, -speed(p))) if ok else None
        return None if single_ok and (best is None or best.quality < base) else best
    drop = 1.0 if max_drop is None else max_drop
    ok = [p for p in faster if (base - p.quality) * 100 <= drop + 1e-9]
    return min(ok, key=lambda p: (speed(p), -p.quality)) if ok else None


def shallowest_within(per_exit_quality: list[float], layers: list[int], max_drop: float) -> int:
    """The shallowest exit whose accuracy alone stays within ``max_drop`` points of the last exit's."""
    best = per_exit_quality[-1]
    return next((layer for q, layer in zip(per_exit_quality, layers) if (best - q) * 100 <= max_drop), layers[-1])


def recommend(chosen: Point | None, points: list[Point], per_exit: list[float], layers: list[int], max_drop: float, single_ms, target):
    """(recommendation, prune layer, one plain sentence) for a calibration's outcome."""
    if chosen is not None:
        vs = f" vs {single_ms:.2f} ms for the single graph ({chosen.latency_ratio:.2f}x)" if single_ms is not None else ""
        lat = f", expected {chosen.expected_latency_ms:.2f} ms on {target}{vs}" if chosen.expected_latency_ms is not None else ""
        return (
            "exits",
            None,
            f"early exit {chosen.policy}={chosen.param:g}: {100 * chosen.quality:.2f}%, {chosen.mean_layers:.2f} layers{lat}",
        )
    fastest = min(points, key=lambda p: p.expected_latency_ms)
    why = (
        f"no exit policy is faster than the single graph on {target} ({single_ms:.2f} ms; "
        f"fastest policy {fastest.policy}={fastest.param:g}: {fastest.expected_latency_ms:.2f} ms)"
    )
    layer = shallowest_within(per_exit, layers, max_drop)
    if layer < layers[-1]:
        return "prune", layer, f"{why}: ship the depth cut at layer {layer} (edgekit exits prune --layer {layer}), or no exits"
    return "none", None, f"{why}, and no depth cut stays within {max_drop:g} points: ship the model without exits"


def save(report: CalibrationReport, out: Path) -> list[Path]:
    """calibration.json and calibration.png (quality vs expected layers and latency; latency per length bucket)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "calibration.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        _plot(plt, report, out / "calibration.png")
        files.append(out / "calibration.png")
    report = report.model_copy(update={"files": [str(f) for f in files]})
    (out / "calibration.json").write_text(report.model_dump_json(indent=2) + "\n")
    return files


def _plot(plt, r: CalibrationReport, path: Path) -> None:
    points, chosen = r.points, r.chosen
    has_lat = r.segment_latency_ms is not None
    panels = 1 + has_lat + (r.length_buckets is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for ax, key, xlabel in (
        (axes[0][0], "mean_layers", "expected layers run"),
        *(((axes[0][1], "expected_latency_ms", f"expected latency (ms, measured on {r.target})"),) if has_lat else ()),
    ):
        for name in dict.fromkeys(p.policy for p in points):
            ps = sorted((p for p in points if p.policy == name), key=lambda p: getattr(p, key))
            ax.plot([getattr(p, key) for p in ps], [100 * p.quality for p in ps], marker="o", ms=3, label=name)
        ax.axhline(100 * r.base_quality, color="gray", ls="--", lw=1, label="no exit")
        ax.axhline(100 * r.base_quality - r.max_drop, color="red", ls=":", lw=1, label="budget")
        if key == "expected_latency_ms" and r.single_graph_latency_ms is not None:
            ax.axvline(r.single_graph_latency_ms, color="black", lw=1, label="single graph")
        if chosen is not None:
            ax.scatter([getattr(chosen, key)], [100 * chosen.quality], s=80, facecolors="none", edgecolors="black", label="chosen")
        ax.set(xlabel=xlabel, ylabel="quality (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if r.length_buckets is not None:
        ax = axes[0][-1]
        x = np.arange(len(r.length_buckets))
        w = 0.27
        ax.bar(x - w, [b.single_graph_ms for b in r.length_buckets], w, label="single graph")
        ax.bar(x, [sum(b.segments_ms) for b in r.length_buckets], w, label="all segments, exits checked")
        ax.bar(x + w, [b.no_checks_ms for b in r.length_buckets], w, label="all segments, no checks")
        if chosen is not None and chosen.check is not None:
            for i, c in enumerate(chosen.check):
                ax.annotate("checks" if c else "no checks", (i, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
        ax.set_xticks(x, [f"<={b.up_to}\n({b.dev_texts} dev)" for b in r.length_buckets])
        ax.set(xlabel="token length bucket", ylabel="batch-1 latency (ms)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"early-exit calibration ({r.data}): {r.recommendation}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

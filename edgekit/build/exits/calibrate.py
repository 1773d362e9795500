"""Calibration: sweep each exit policy's parameter on a dev set and pick an operating point.

All exits' outputs are computed once; each policy is then *simulated* with the same numpy
code the deployed controller runs. A point's expected latency is
``sum_k P(exit at k) * (measured latency of running segments 0..k on the target)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.deploy.exits.policies import EXIT_POLICIES, make, simulate
from edgekit.errors import ConfigError


@dataclass(frozen=True)
class Point:
    policy: str
    param: float
    quality: float  # accuracy (labels), agreement with the final exit (no labels), or cosine fidelity (embeddings)
    mean_layers: float
    exit_histogram: list[int]
    expected_latency_ms: float | None


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
) -> tuple[float, list[Point]]:
    """(quality of the model without exits, every policy x parameter point)."""
    final = exits[-1]["output"]
    base = quality(task, final, final, labels)
    names = policies or [n for n, p in EXIT_POLICIES.items() if task in p.tasks]
    cum = np.cumsum(segment_ms) if segment_ms is not None else None
    points = []
    for name in names:
        cls = EXIT_POLICIES[name]
        for param in cls.grid:
            policy = make(name, param, task)
            exit_at, out = simulate(policy, exits)
            hist = np.bincount(exit_at, minlength=len(layers))
            points.append(
                Point(
                    policy=name,
                    param=float(param),
                    quality=quality(task, out, final, labels),
                    mean_layers=float(np.mean(np.asarray(layers)[exit_at])),
                    exit_histogram=hist.tolist(),
                    expected_latency_ms=float((hist / hist.sum()) @ cum) if cum is not None else None,
                )
            )
    return base, points


def choose(base: float, points: list[Point], *, max_drop: float | None = 1.0, max_latency_ms: float | None = None) -> Point:
    """The fastest point within ``max_drop`` points of ``base`` (or the most accurate under a latency target)."""
    speed = (lambda p: p.expected_latency_ms) if all(p.expected_latency_ms is not None for p in points) else (lambda p: p.mean_layers)
    if max_latency_ms is not None:
        if any(p.expected_latency_ms is None for p in points):
            raise ConfigError("a latency target needs measured segment latencies", hint="calibrate with --target to measure them")
        ok = [p for p in points if p.expected_latency_ms <= max_latency_ms]
        if not ok:
            raise ConfigError(
                f"no operating point meets {max_latency_ms} ms (fastest: {min(speed(p) for p in points):.2f} ms)",
                hint="raise the latency target",
            )
        return max(ok, key=lambda p: (p.quality, -speed(p)))
    drop = 1.0 if max_drop is None else max_drop
    ok = [p for p in points if (base - p.quality) * 100 <= drop + 1e-9]
    return min(ok, key=lambda p: (speed(p), -p.quality))


def save(
    out: Path, base: float, points: list[Point], chosen: Point, layers: list[int], segment_ms: list[float] | None, meta: dict
) -> list[Path]:
    """calibration.json and calibration.png (quality vs expected layers and vs latency)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "base_quality": base,
        "layers": layers,
        "segment_latency_ms": segment_ms,
        "chosen": asdict(chosen),
        "points": [asdict(p) for p in points],
        **meta,
    }
    (out / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    written = [out / "calibration.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    has_lat = segment_ms is not None
    fig, axes = plt.subplots(1, 2 if has_lat else 1, figsize=(11 if has_lat else 6, 4), squeeze=False)
    for ax, key, xlabel in (
        (axes[0][0], "mean_layers", "expected layers run"),
        *(((axes[0][1], "expected_latency_ms", "expected latency (ms, measured segments)"),) if has_lat else ()),
    ):
        for name in dict.fromkeys(p.policy for p in points):
            ps = sorted((p for p in points if p.policy == name), key=lambda p: getattr(p, key))
            ax.plot([getattr(p, key) for p in ps], [100 * p.quality for p in ps], marker="o", ms=3, label=name)
        ax.axhline(100 * base, color="gray", ls="--", lw=1, label="no exit")
        ax.axhline(100 * base - meta.get("max_drop", 1.0), color="red", ls=":", lw=1, label="budget")
        ax.scatter([getattr(chosen, key)], [100 * chosen.quality], s=80, facecolors="none", edgecolors="black", label="chosen")
        ax.set(xlabel=xlabel, ylabel="quality (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"early-exit calibration ({meta.get('data', '')})")
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)
    return [*written, out / "calibration.png"]

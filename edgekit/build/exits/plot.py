"""calibration.png: quality vs expected layers and latency (the chosen point with its bootstrap
interval, exit subsets and per-exit thresholds as separate marks), and latency per length bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _label(p) -> str:
    kind = "per-exit" if isinstance(p.param, list) else ""
    sub = "subset" if p.exits is not None else ""
    return " ".join(x for x in (p.policy, sub, kind) if x)


def plot(plt, r, path: Path) -> None:
    """``r``: a CalibrationReport."""
    points, chosen = r.points, r.chosen
    has_lat = r.segment_latency_ms is not None
    panels = 1 + has_lat + (r.length_buckets is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for ax, key, xlabel in (
        (axes[0][0], "mean_layers", "expected layers run"),
        *(((axes[0][1], "expected_latency_ms", f"expected latency (ms, measured on {r.target})"),) if has_lat else ()),
    ):
        for name in dict.fromkeys(p.policy for p in points):
            ps = sorted(
                (p for p in points if p.policy == name and p.exits is None and not isinstance(p.param, list)), key=lambda p: getattr(p, key)
            )
            ax.plot([getattr(p, key) for p in ps], [100 * p.quality for p in ps], marker="o", ms=3, label=name)
        others = [p for p in points if p.exits is not None or isinstance(p.param, list)]
        for label in dict.fromkeys(_label(p) for p in others):
            ps = [p for p in others if _label(p) == label]
            ax.scatter([getattr(p, key) for p in ps], [100 * p.quality for p in ps], s=6, alpha=0.5, label=label)
        ax.axhline(100 * r.base_quality, color="gray", ls="--", lw=1, label="no exit")
        ax.axhline(100 * r.base_quality - r.max_drop, color="red", ls=":", lw=1, label="budget")
        if key == "expected_latency_ms" and r.single_graph_latency_ms is not None:
            ax.axvline(r.single_graph_latency_ms, color="black", lw=1, label="single graph")
        if chosen is not None:
            x, y = getattr(chosen, key), 100 * chosen.quality
            kept = f" (exits {','.join(map(str, chosen.exits))})" if chosen.exits is not None else ""
            ax.scatter([x], [y], s=80, facecolors="none", edgecolors="black", label=f"chosen{kept}")
            if r.interval is not None:
                i = r.interval
                # the point is shown on all dev rows; a bound from other rows (held out) can lie above it: no bar then
                if i.search_texts:  # checked on held-out rows: their drop bound, below the chosen point
                    err = [[max(0.0, y - 100 * chosen.quality_low)], [0.0]]
                    label = f"{100 * i.confidence:g}% drop bound ({i.dev_texts} held-out dev)"
                else:
                    err = [[max(0.0, y - 100 * i.quality_low)], [max(0.0, 100 * i.quality_high - y)]]
                    label = f"{100 * i.confidence:g}% bounds ({i.dev_texts} dev)"
                ax.errorbar([x], [y], yerr=err, color="black", capsize=4, lw=1, label=label)
        ax.set(xlabel=xlabel, ylabel=f"{r.metric} (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if r.length_buckets is not None:
        ax = axes[0][-1]
        x = np.arange(len(r.length_buckets))
        w = 0.27
        ax.bar(x - w, [b.single_graph_ms for b in r.length_buckets], w, label="single graph")
        ax.bar(x, [sum(b.segments_ms) for b in r.length_buckets], w, label="every exit checked, none taken")
        ax.bar(x + w, [b.no_checks_ms for b in r.length_buckets], w, label="no exit checked (shipped single graph)")
        if chosen is not None and chosen.check is not None:
            for i, c in enumerate(chosen.check):
                ax.annotate("checks" if c else "no checks", (i, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
        ax.set_xticks(x, [f"<={b.up_to}\n({b.dev_texts} dev)" for b in r.length_buckets])
        ax.set(xlabel="token length bucket", ylabel="batch-1 latency (ms)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    title = f"early-exit calibration ({r.data}): {r.recommendation}"
    if chosen is not None:
        title += f" {chosen.spec}"
    if r.interval is not None:
        i = r.interval
        title += f"\n{'held-out ' if i.search_texts else ''}dev drop {i.drop:.2f} pt, {100 * i.confidence:g}% bound {i.drop_high:.2f} pt; ~{i.dev_texts_needed} dev texts for a margin under {r.max_drop / 4:g} pt"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Presenting profile reports: rich tables for the terminal, Markdown, and PNG plots.

Plots use matplotlib (the ``plots`` extra) with the Agg backend, imported only here.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from edgekit.deploy.report import Comparison, ProfileReport, headline
from edgekit.deps import require

HEADLINE_LABELS = {
    "first_token_p50_ms": "p50 ms",
    "first_token_p90_ms": "p90 ms",
    "end_to_end_p50_ms": "e2e p50",
    "best_seq_per_s": "seq/s",
    "cold_first_result_ms": "cold ms",
    "peak_rss_mb": "RSS MB",
    "model_mb": "MB",
}
# Lower is better for these; a ratio below 1 is a gain.
LOWER_IS_BETTER = {"first_token_p50_ms", "first_token_p90_ms", "end_to_end_p50_ms", "cold_first_result_ms", "peak_rss_mb", "model_mb"}


def label(r: ProfileReport) -> str:
    return f"{r.artifact.name}/{r.artifact.target}" if r.artifact.name else r.artifact.target


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(title: str, columns: list[str], *, left: int = 1) -> Table:
    """A table that fits 80 columns: cells fold (never an ellipsis), the first ``left`` columns wrap."""
    t = Table(title=title, title_justify="left", padding=(0, 1), collapse_padding=True)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right", overflow="fold")
    return t


def point_rows(r: ProfileReport) -> list[tuple[str, str, str, str, str, str]]:
    """(point, p50, p90, p99, mean, n) rows of one report, short labels: ``model b1 s128``, ``e2e``..."""
    ft = r.first_token
    shape = f"b1 s{ft.seq_len}" if ft.seq_len else f"b1 ~{ft.mean_tokens:.0f}tok" if ft.lengths.startswith("text:") else "b1 s?"
    stats = [(f"model {shape}", ft.model_only)]
    if ft.end_to_end:
        stats.append((f"e2e {shape}", ft.end_to_end))
    stats += [(f"model b1 s{p.seq_len}", p.model_only) for p in r.latency_vs_seq]
    rows = [(what, f"{s.p50:.2f}", _fmt(s.p90), _fmt(s.p99), f"{s.mean:.2f}", str(s.n)) for what, s in stats]
    if c := r.cold_first_result:
        rows.append((f"cold (load {_fmt(c.process_start_to_loaded_ms, 0)})", f"{c.total_ms:.1f}", "", "", "", str(c.runs)))
    for p in r.throughput:
        rows.append(
            (f"tput b{p.batch} s{p.seq_len}{' *' if p.best else ''}", f"{p.latency_ms_p50:.2f}", "", "", "", f"{p.seq_per_s:.1f}/s")
        )
    return rows


def latency_table(reports: list[ProfileReport]) -> Table:
    """Every measured point of each report. model: first-token model-only; e2e: with tokenization;
    cold: first result from a fresh process; tput: throughput (n is sequences/s; * the best batch)."""
    t = _table("latency (ms), throughput (seq/s)", ["artifact", "point", "p50", "p90", "p99", "mean", "n"], left=2)
    for r in reports:
        for i, row in enumerate(point_rows(r)):
            t.add_row(label(r) if i == 0 else "", *row)
        t.add_section()
    return t


def comparison_table(c: Comparison) -> Table:
    t = _table(f"ratios to {label(c.reports[0])} (interleaved; first-token is batch 1)", ["artifact", *HEADLINE_LABELS.values()])
    for r, ratio in zip(c.reports, c.ratios):
        h = headline(r)
        cells = []
        for key in HEADLINE_LABELS:
            value, rel = h[key], ratio[key]
            cells.append("-" if value is None else f"{value:.1f}" + (f"\n{rel:.2f}x" if rel is not None and r is not c.reports[0] else ""))
        t.add_row(label(r), *cells)
    return t


def markdown(
    reports: list[ProfileReport],
    comparison: Comparison | None = None,
    plots: list[Path] | None = None,
    accuracy: dict[str, dict[str, float]] | None = None,
) -> str:
    """A Markdown summary: host, settings, one table of headline figures, details, plots."""
    r0 = reports[0]
    lines = ["# edgekit profile", ""]
    if r0.host:
        h = r0.host
        runtimes = ", ".join(f"{k} {v}" for k, v in h.runtimes.items())
        lines += [f"Host: {h.cpu}, {h.logical_cores} logical cores, {h.os}, Python {h.python}, edgekit {h.edgekit}; {runtimes}."]
        if h.power:
            lines += ["Power/clocks: " + ", ".join(f"{k}={v}" for k, v in h.power.items()) + "."]
    s = r0.settings
    lines += [
        f"Settings: warm-up {s.warmup}, at least {s.min_runs} runs and {s.seconds_per_point} s per point, "
        f"sequence length {s.seq_len if not s.text_file else 'from ' + s.text_file}, batches {s.batches}, cold runs {s.cold_runs}"
        + (", artifacts measured interleaved in one run." if len(reports) > 1 else "."),
        "",
        "| artifact | source | "
        + " | ".join(HEADLINE_LABELS.values())
        + (" | " + " | ".join(next(iter(accuracy.values()))) if accuracy else "")
        + " |",
        "|---|---|" + "---:|" * (len(HEADLINE_LABELS) + (len(next(iter(accuracy.values()))) if accuracy else 0)),
    ]
    for i, r in enumerate(reports):
        h = headline(r)
        cells = []
        for key in HEADLINE_LABELS:
            rel = comparison.ratios[i][key] if comparison and i > 0 else None
            cells.append("-" if h[key] is None else f"{h[key]:.2f}" + (f" ({rel:.2f}x)" if rel is not None else ""))
        acc = accuracy.get(r.artifact.path, {}) if accuracy else {}
        acc_cells = [f"{v:.4f}" for v in acc.values()] if accuracy else []
        lines.append(f"| {label(r)} | {r.source.tool} | " + " | ".join(cells + acc_cells) + " |")
    lines += ["", "What each figure includes:", ""]
    lines += [f"- **{k}**: {v}" for k, v in r0.includes.items()]
    for r in reports:
        lines += ["", f"## {label(r)}", "", "| point | p50 | p90 | p95 | p99 | mean | n |", "|---|---:|---:|---:|---:|---:|---:|"]
        ft = r.first_token
        pts = [("first-token model-only", ft.model_only)] + ([("first-token end-to-end", ft.end_to_end)] if ft.end_to_end else [])
        pts += [(f"b1 s{p.seq_len}", p.model_only) for p in r.latency_vs_seq]
        for name, st in pts:
            lines.append(f"| {name} | {st.p50:.2f} | {_fmt(st.p90)} | {_fmt(st.p95)} | {_fmt(st.p99)} | {st.mean:.2f} | {st.n} |")
        if r.throughput:
            lines += ["", "| batch | seq | seq/s | tokens/s | batch p50 ms |", "|---:|---:|---:|---:|---:|"]
            lines += [
                f"| {p.batch}{' (best)' if p.best else ''} | {p.seq_len} | {p.seq_per_s:.1f} | {p.tokens_per_s:.0f} | {p.latency_ms_p50:.2f} |"
                for p in r.throughput
            ]
        for w in r.warnings + r.source.notes:
            lines.append(f"\n> {w}")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def plots(reports: list[ProfileReport], out_dir: Path, stem: str, accuracy: dict[str, dict[str, float]] | None = None) -> list[Path]:
    """PNG plots: latency vs sequence length, throughput vs batch size, accuracy vs latency."""
    mpl = require("matplotlib", for_="profile plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if any(r.latency_vs_seq for r in reports):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in reports:
            if r.latency_vs_seq:
                xs = [p.seq_len for p in r.latency_vs_seq]
                ax.plot(xs, [p.model_only.p50 for p in r.latency_vs_seq], marker="o", label=f"{label(r)} p50")
                ax.fill_between(
                    xs,
                    [p.model_only.p50 for p in r.latency_vs_seq],
                    [p.model_only.p50 if p.model_only.p90 is None else p.model_only.p90 for p in r.latency_vs_seq],
                    alpha=0.2,
                )
        ax.set(
            xlabel="sequence length (tokens)", ylabel="batch-1 model-only latency (ms)", title="latency vs sequence length (band: p50-p90)"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"{stem}-latency-vs-seq.png"))
    if any(len(r.throughput) > 1 for r in reports):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in reports:
            ax.plot([p.batch for p in r.throughput], [p.seq_per_s for p in r.throughput], marker="o", label=label(r))
        ax.set(xlabel="batch size", ylabel="sequences / s", title=f"throughput vs batch size (seq {reports[0].throughput[0].seq_len})")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"{stem}-throughput.png"))
    if accuracy:
        metric = next(iter(next(iter(accuracy.values()))))
        pts = [(r.first_token.model_only.p50, accuracy[r.artifact.path][metric], label(r)) for r in reports if r.artifact.path in accuracy]
        if pts:
            fig, ax = plt.subplots(figsize=(6, 4))
            for x, y, name in pts:
                ax.scatter([x], [y], s=40)
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ax.set(xlabel="first-token p50 (ms)", ylabel=metric, title=f"{metric} vs latency")
            ax.margins(x=0.25, y=0.1)
            ax.grid(alpha=0.3)
            written.append(_save(fig, out_dir / f"{stem}-accuracy-vs-latency.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def calibration_plot(doc: dict, path: Path) -> Path:
    """An early-exit ``calibration.json`` as a PNG: quality vs expected layers (and vs expected latency
    where the segments were measured), one line per policy, the chosen point circled."""
    mpl = require("matplotlib", for_="calibration plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    points, chosen, base = doc.get("points") or [], doc.get("chosen") or {}, doc.get("base_quality")
    axes_keys = [("mean_layers", "expected layers run")]
    if points and all(p.get("expected_latency_ms") is not None for p in points):
        axes_keys.append(("expected_latency_ms", "expected latency (ms)"))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5.5 * len(axes_keys), 4), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], axes_keys):
        for name in dict.fromkeys(p["policy"] for p in points):
            ps = sorted((p for p in points if p["policy"] == name), key=lambda p: p[key])
            ax.plot([p[key] for p in ps], [100 * p["quality"] for p in ps], marker="o", ms=3, label=name)
        if base is not None:
            ax.axhline(100 * base, color="gray", ls="--", lw=1, label="no exit")
        if chosen.get(key) is not None:
            ax.scatter([chosen[key]], [100 * chosen["quality"]], s=80, facecolors="none", edgecolors="black", label="chosen")
        ax.set(xlabel=xlabel, ylabel="quality (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"early-exit calibration {doc.get('data', '')}".strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)

"""One self-contained HTML page from edgekit's JSON files: tables, and PNG plots inlined as data URIs.

Takes profile reports (measured or imported), comparisons, eval reports and early-exit
``calibration.json`` files, in any mix; the kind of each file is read from its keys. The page
has no external asset (no script, stylesheet, font or image fetched), so it can be mailed or
attached to a CI run as it is. Plots come from :mod:`edgekit.deploy.render` (matplotlib, the
``plots`` extra); without matplotlib the page has the tables only and says so.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.deploy import render
from edgekit.deploy.eval import EvalReport
from edgekit.deploy.report import Comparison, ProfileReport, headline, ratios
from edgekit.errors import DataError, MissingDependency

ACCURACY_METRICS = ("accuracy", "recall@10", "recall@1", "fidelity_cosine_mean")
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ratio{color:#666;font-size:.85em}.warn{color:#8a5300}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}footer{margin-top:3em;color:#888;font-size:.85em}
"""


@dataclass
class Inputs:
    """The files of one page, sorted by kind."""

    profiles: list[ProfileReport] = field(default_factory=list)
    evals: list[EvalReport] = field(default_factory=list)
    calibrations: list[tuple[str, dict]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def read(paths: list[str | Path]) -> Inputs:
    """Load every file (a folder: its ``*.json``); a file of no known kind is a DataError naming it."""
    got = Inputs()
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    if not files:
        raise DataError("no report files given", hint="pass profile, eval or calibration JSON files (or folders of them)")
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{f}: no such file", hint="pass report JSON files") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{f}: not a JSON report ({err})", hint="pass report JSON files") from err
        got.sources.append(str(f))
        try:
            if isinstance(doc, dict) and "first_token" in doc:
                got.profiles.append(ProfileReport.model_validate(doc))
            elif isinstance(doc, dict) and "ratios" in doc and "reports" in doc:
                got.profiles += [r for r in Comparison.model_validate(doc).reports if r not in got.profiles]
            elif isinstance(doc, dict) and "metrics" in doc and "manifest_sha256" in doc:
                got.evals.append(EvalReport.model_validate(doc))
            elif isinstance(doc, dict) and "points" in doc and "base_quality" in doc:
                got.calibrations.append((str(f), doc))
            else:
                raise DataError(
                    f"{f}: not a profile, comparison, eval or calibration report",
                    hint="pass files written by edgekit profile / eval / report import / exits calibrate",
                )
        except ValueError as err:  # pydantic's ValidationError
            raise DataError(f"{f}: does not match edgekit's schema: {str(err).splitlines()[0]}", hint="regenerate it") from err
    return got


def accuracy(profiles: list[ProfileReport], evals: list[EvalReport]) -> dict[str, dict[str, float]]:
    """Eval metrics by profiled artifact path, matched on the manifest's sha256; the first metric all share."""
    by_sha = {e.manifest_sha256: e.metrics for e in evals}
    found = {r.artifact.path: by_sha[r.artifact.manifest_sha256] for r in profiles if r.artifact.manifest_sha256 in by_sha}
    for metric in ACCURACY_METRICS:
        if found and all(metric in m for m in found.values()):
            return {path: {metric: m[metric]} for path, m in found.items()}
    return {}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """``rows`` hold HTML already escaped by the caller."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _profiles(profiles: list[ProfileReport], acc: dict[str, dict[str, float]], images: list[str]) -> list[str]:
    """The headline table, the plots, then each report's points, inclusions, warnings and notes."""
    rel = ratios(profiles)
    metric = next(iter(next(iter(acc.values())))) if acc else None
    head = ["artifact", "source", *render.HEADLINE_LABELS.values(), *([metric] if metric else [])]
    rows = []
    for i, r in enumerate(profiles):
        h = headline(r)
        cells = [_e(render.label(r)), _e(r.source.tool)]
        for key in render.HEADLINE_LABELS:
            ratio = rel[i][key] if i else None
            cells.append("-" if h[key] is None else f"{h[key]:.2f}" + (f' <span class="ratio">{ratio:.2f}x</span>' if ratio else ""))
        if metric:
            cells.append(f"{acc[r.artifact.path][metric]:.4f}" if r.artifact.path in acc else "-")
        rows.append(cells)
    out = [
        "<h2>Profiles</h2>",
        f'<p class="note">Ratios are to {_e(render.label(profiles[0]))}; first-token figures are batch 1, in ms.</p>',
        _table(head, rows, numeric_from=2),
        *images,
    ]
    if (host := profiles[0].host) is not None:
        runtimes = ", ".join(f"{k} {v}" for k, v in host.runtimes.items())
        out.append(
            f"<p>Host: {_e(host.cpu)}, {host.logical_cores} logical cores, {_e(host.os)}, Python {_e(host.python)}; {_e(runtimes)}.</p>"
        )
    out.append(
        "<h3>What each figure includes</h3><ul>"
        + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in profiles[0].includes.items())
        + "</ul>"
    )
    for r in profiles:
        out += [
            f"<h3>{_e(render.label(r))} ({_e(r.source.tool)})</h3>",
            _table(["point", "p50", "p90", "p99", "mean", "n"], [list(map(_e, row)) for row in render.point_rows(r)]),
        ]
        differs = {k: v for k, v in r.includes.items() if profiles[0].includes.get(k) != v}
        if differs:
            out.append("<ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in differs.items()) + "</ul>")
        out += [f'<p class="warn">warning: {_e(w)}</p>' for w in r.warnings]
        out += [f'<p class="note">{_e(n)}</p>' for n in r.source.notes]
    return out


def _evals(evals: list[EvalReport]) -> list[str]:
    names = list(dict.fromkeys(k for e in evals for k in e.metrics))
    rows = [
        [
            _e(e.target),
            _e(Path(e.artifact).name),
            _e(Path(e.data).name),
            str(e.n),
            *(f"{e.metrics[k]:.4f}" if k in e.metrics else "-" for k in names),
        ]
        for e in evals
    ]
    out = ["<h2>Accuracy of the artifacts</h2>", _table(["target", "artifact", "data", "n", *names], rows, numeric_from=3)]
    for e in evals:
        out += [f'<p class="note">{_e(e.target)}: {_e(n)}</p>' for n in e.notes]
    return out


def _calibration(name: str, doc: dict) -> list[str]:
    c = doc.get("chosen") or {}
    row = [
        _e(c.get("policy", "-")),
        _e(c.get("param", "-")),
        f"{100 * c.get('quality', 0):.2f}",
        f"{c.get('mean_layers', 0):.2f}",
        "-" if c.get("expected_latency_ms") is None else f"{c['expected_latency_ms']:.2f}",
    ]
    base = doc.get("base_quality")
    return [
        f"<h2>Early-exit calibration: {_e(Path(name).parent.name or name)}</h2>",
        f"<p>Quality without exits: {100 * base:.2f}%; {len(doc.get('points') or [])} operating points swept.</p>"
        if base is not None
        else "",
        _table(["chosen policy", "param", "quality %", "layers", "latency ms"], [row], numeric_from=1),
    ]


def page(inputs: Inputs, *, title: str = "edgekit report", plots: bool = True) -> str:
    """The HTML text of one report page."""
    acc = accuracy(inputs.profiles, inputs.evals)
    body = [f"<h1>{_e(title)}</h1>"]
    pngs: list[Path] = []
    missing = None
    with tempfile.TemporaryDirectory() as tmp:
        if plots:
            try:
                if inputs.profiles:
                    pngs += render.plots(inputs.profiles, Path(tmp), "profile", acc or None)
                for i, (_, doc) in enumerate(inputs.calibrations):
                    pngs.append(render.calibration_plot(doc, Path(tmp) / f"calibration-{i}.png"))
            except MissingDependency as err:
                missing = err
        images = {p.name: _img(p) for p in pngs}
        if inputs.profiles:
            body += _profiles(inputs.profiles, acc, [img for n, img in images.items() if n.startswith("profile")])
        if inputs.evals:
            body += _evals(inputs.evals)
        for i, (name, doc) in enumerate(inputs.calibrations):
            body += _calibration(name, doc)
            body += [images[n] for n in images if n == f"calibration-{i}.png"]
    if missing is not None:
        body.append(f'<p class="warn">plots left out: {_e(missing.message)} ({_e(missing.hint)})</p>')
    sources = "".join(f"<li>{_e(s)}</li>" for s in inputs.sources)
    body.append(f"<footer>edgekit {_e(__version__)}; from:<ul>{sources}</ul></footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write(paths: list[str | Path], out: str | Path, *, title: str = "edgekit report", plots: bool = True) -> Path:
    """Read ``paths`` and write the page to ``out``."""
    from edgekit.deploy.files import write_text

    return write_text(Path(out), page(read(paths), title=title, plots=plots))

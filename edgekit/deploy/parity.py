"""Compare a runtime's outputs with PyTorch's on the same real tokenized text.

Export records PyTorch's outputs in ``parity_reference.npz`` (inputs + outputs), so every
later compile can be checked against PyTorch without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit.deploy.artifact import ParityReport
from edgekit.errors import ParityError

REFERENCE = "parity_reference.npz"


class Tolerance(BaseModel):
    """Parity tolerances. Defaults suit fp32 runtimes; lower precisions need looser ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    atol: float = Field(1e-3, gt=0, description="max abs difference allowed on any output value")
    min_argmax_agreement: float = Field(1.0, ge=0, le=1, description="classifier: share of rows whose argmax must agree")
    min_cosine: float = Field(0.9999, ge=-1, le=1, description="embeddings: lowest cosine allowed between rows")
    max_rows_over_atol: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of rows (texts) whose largest difference may exceed atol: a quantization-boundary flip moves "
        "a text or two, a wrong graph moves every text; the argmax/cosine floor still holds on every row",
    )


# Defaults per precision: fp32 runtimes must match PyTorch closely; half precisions cannot.
TOLERANCES = {
    "fp32": Tolerance(),
    "fp16": Tolerance(atol=0.1, min_argmax_agreement=0.95, min_cosine=0.99),
    "bf16": Tolerance(atol=0.25, min_argmax_agreement=0.9, min_cosine=0.98),
    # INT8 (PTQ or lowered QDQ graphs) vs the fp32 PyTorch model (lowered: vs its fake-quant model). The share of texts
    # that may change their argmax may also drift past atol: a code on a quantization boundary that rounds the other
    # way moves one text, and in a binary network it moves it far (a lowered BiT W1E1A1 MiniLM-L6 on openvino-cpu,
    # 2026-12-03: 30 of 32 parity texts bit-exact, one 0.29 off, one 0.88 off with its argmax changed; the same graph on
    # ONNX Runtime moved only the first). A wrong graph moves every text.
    "int8": Tolerance(atol=0.5, min_argmax_agreement=0.9, min_cosine=0.97, max_rows_over_atol=0.1),
}


def save_reference(path: Path, feed: dict[str, np.ndarray], output: np.ndarray) -> None:
    np.savez_compressed(path, output=output, **{f"input.{k}": v for k, v in feed.items()})


def load_reference(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path) as z:
        feed = {k.removeprefix("input."): z[k] for k in z.files if k.startswith("input.")}
        return feed, z["output"]


def run_chunked(infer: Callable[[dict], np.ndarray], feed: dict[str, np.ndarray], batch: int) -> np.ndarray:
    rows = next(iter(feed.values())).shape[0]
    parts = [infer({k: v[i : i + batch] for k, v in feed.items()}) for i in range(0, rows, batch)]
    return np.concatenate(parts, axis=0)


def row_max_diff(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The largest abs difference of each row (text)."""
    rows = len(reference)
    return np.abs(actual - reference).reshape(rows, -1).max(-1) if reference.size else np.zeros(rows)


def rows_over(row_diff: np.ndarray, atol: float) -> int:
    """How many rows differ by more than ``atol`` (a NaN row counts)."""
    return int(np.sum(~(row_diff <= atol)))


def compare(reference: np.ndarray, actual: np.ndarray, *, task: str, output: str, runtime: str, tolerance: Tolerance) -> ParityReport:
    """Figures for ``actual`` vs ``reference``; ``passed`` says whether they meet ``tolerance``."""
    if reference.shape != actual.shape:
        raise ParityError(
            f"{runtime}: output {output!r} has shape {actual.shape}, PyTorch gave {reference.shape}",
            hint="the graph was built for other shapes",
        )
    ref, act = reference.astype(np.float64), actual.astype(np.float64)
    if not np.isfinite(ref).all():
        # PyTorch itself gave NaN/Inf on real text: no runtime or tolerance can match that
        raise ParityError(
            f"output {output!r}: the PyTorch model itself gives NaN/Inf on real text ({int((~np.isfinite(ref)).sum())} values)",
            hint="the checkpoint's weights (or quantization scales) hold NaN/Inf; retrain or re-save it",
        )
    rows = int(ref.shape[0])
    row_diff = row_max_diff(ref, act)
    max_abs = float(row_diff.max()) if rows else 0.0
    over = rows_over(row_diff, tolerance.atol)
    within = over <= tolerance.max_rows_over_atol * rows
    finite = bool(np.isfinite(act).all())
    common = dict(
        runtime=runtime,
        output=output,
        texts=rows,
        max_abs_diff=max_abs,
        atol=tolerance.atol,
        rows_over_atol=over if tolerance.max_rows_over_atol else None,
    )
    if task == "classifier":
        agree = float(np.mean(ref.argmax(-1) == act.argmax(-1)))
        ok = finite and within and agree >= tolerance.min_argmax_agreement
        return ParityReport(**common, argmax_agreement=agree, min_required=tolerance.min_argmax_agreement, passed=ok)
    num = (ref * act).sum(-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(act, axis=-1)
    cos = float(np.min(num / np.maximum(den, 1e-12)))
    ok = finite and within and cos >= tolerance.min_cosine
    return ParityReport(**common, min_cosine=cos, min_required=tolerance.min_cosine, passed=ok)


def enforce(report: ParityReport) -> ParityReport:
    """Raise :class:`ParityError` naming the output and the largest difference if it failed."""
    if not report.passed and not np.isfinite(report.max_abs_diff):
        raise ParityError(
            f"{report.runtime} output {report.output!r} has NaN/Inf values where PyTorch's are finite",
            hint="the runtime overflowed at this precision: compile with a wider precision (e.g. fp32), or report a bug",
        )
    if not report.passed:
        figure = (
            f"argmax agreement {report.argmax_agreement:.4f}"
            if report.argmax_agreement is not None
            else f"min cosine {report.min_cosine:.6f}"
        )
        raise ParityError(
            f"{report.runtime} output {report.output!r} differs from PyTorch: max abs diff {report.max_abs_diff:.3g} (atol {report.atol:g}"
            f"{_rows_over(report)}), {figure} (need >= {report.min_required})",
            hint=f"loosen with {_flags(report)} if this precision is intended, else report a bug",
        )
    return report


def _flags(report: ParityReport) -> str:
    """The command-line flags that loosen the criteria ``report`` failed (``edgekit export``/``compile``)."""
    flags = ["--atol"] if not report.max_abs_diff <= report.atol else []
    if report.argmax_agreement is not None and report.argmax_agreement < report.min_required:
        flags.append("--min-agreement")
    if report.min_cosine is not None and report.min_cosine < report.min_required:
        flags.append("--min-cosine")
    return "/".join(flags or ["--atol"])


def _rows_over(report: ParityReport) -> str:
    """'; over it on N of M texts' where the tolerance allows some texts over atol, else ''."""
    return f"; over it on {report.rows_over_atol} of {report.texts} texts" if report.rows_over_atol is not None else ""

"""Calibration: sweep each exit policy's parameter on a dev set and pick an operating point.

All exits' outputs are computed once; each policy is then *simulated* with the same numpy
code the deployed controller runs. With a target, latency is measured there, per length
bucket (token lengths up to 16, 32, 64, 128, ...), beside the single graph of the same model
on the same texts (what the user would ship without exits). A point's expected latency is,
per bucket, ``sum_k P(exit at k) * (measured time to the end of segment k, exit checks
included)``, or the single graph the artifact ships where checking no exit is cheaper (the
point's length plan), weighted by the dev texts in each bucket. A point no faster than the
single graph is never chosen; when none is, the report recommends the depth cut or no exits.

Besides one parameter for every exit, an operating point may keep only some exits (fewer
segment boundaries; see :meth:`Timing.merged`) or use one threshold per exit
(:mod:`edgekit.build.exits.operating` searches those). With a bootstrap ``bound`` each point
also gets a lower confidence bound of its quality (paired with the model without exits), and
the budget is checked on that bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.deploy.eval import ranks
from edgekit.deploy.exits.policies import EXIT_POLICIES, make, policy_spec, simulate, softmax
from edgekit.errors import ConfigError

BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Point:
    policy: str
    param: float | list[float]  # one value for every exit, or one per kept exit before the last
    quality: float  # accuracy (labels), agreement with the final exit (no labels), cosine fidelity or recall@1 (embeddings)
    mean_layers: float
    exit_histogram: list[int]
    expected_latency_ms: float | None
    latency_ratio: float | None = None  # expected latency / the single graph's, both measured on the target
    check: list[bool] | None = None  # per length bucket: exits checked (False: that bucket runs the shipped single graph)
    exits: list[int] | None = None  # layers whose exits this point keeps (None: all; the last is always kept)
    quality_low: float | None = None  # lower confidence bound: base quality minus the upper bound of the paired drop

    @property
    def spec(self) -> str:
        return policy_spec(self.policy, self.param)

    def budget_quality(self) -> float:
        """The quality the budget is checked on: the lower bound where there is one."""
        return self.quality if self.quality_low is None else self.quality_low


@dataclass(frozen=True)
class Timing:
    """Measured on the target, batch 1, per length bucket (``buckets``: upper bounds, ascending).

    ``cum_ms[b, k]``: from the call's start to the end of segment k, exit checks included;
    ``chain_ms[b]``: a call that checks no exit, which the controller answers with the single
    graph the artifact ships (so it is measured as ``single_ms``; an artifact without one ran
    every segment back to back); ``single_ms[b]``: the single graph. ``texts[b]``: how many
    texts each mean is over."""

    buckets: list[int]
    cum_ms: np.ndarray
    chain_ms: np.ndarray
    single_ms: np.ndarray
    texts: list[int]

    def boundary_ms(self, check: bool = True) -> np.ndarray:
        """Estimated cost of one segment boundary per bucket (with its exit check, or without): what all
        segments cost beyond the single graph, spread evenly over the boundaries (never below 0)."""
        n = self.cum_ms.shape[1] - 1
        total = self.cum_ms[:, -1] if check else self.chain_ms
        return np.maximum(total - self.single_ms, 0.0) / max(n, 1)

    def merged(self, keep: list[int]) -> Timing:
        """The timing of an artifact that keeps only the exits ``keep`` (0-based, before the last): the
        segments between kept exits merged, each removed boundary's estimated cost taken off."""
        n = self.cum_ms.shape[1]
        idx = sorted(keep) + [n - 1]
        dropped = np.array([sum(1 for d in range(n - 1) if d not in keep and d < k) for k in idx])
        cum = self.cum_ms[:, idx] - np.outer(self.boundary_ms(True), dropped)
        chain = self.chain_ms - self.boundary_ms(False) * (n - len(idx))
        return Timing(self.buckets, np.maximum(cum, 0.0), np.maximum(chain, self.single_ms), self.single_ms, self.texts)


def bucket_of(lengths: np.ndarray, buckets: list[int] | tuple[int, ...]) -> np.ndarray:
    """Bucket index of each token length (past the last bound: the last bucket)."""
    return np.minimum(np.searchsorted(np.asarray(buckets), lengths), len(buckets) - 1)


class LengthBucket(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    up_to: int
    dev_texts: int
    latency_texts: int
    single_graph_ms: float
    segments_ms: list[float]  # per exit: from the previous exit to this one, exit check included (one graph or segment)
    no_checks_ms: float  # a call that checks no exit: the shipped single graph (formerly every segment back to back)


class Interval(BaseModel):
    """The chosen point's dev quality with bootstrap bounds (each one-sided at ``confidence``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    confidence: float
    resamples: int
    quality: float
    quality_low: float
    quality_high: float
    drop: float  # points below the model without exits, on dev
    drop_high: float  # its upper bound (paired bootstrap): what the budget was checked on
    dev_texts: int
    dev_texts_needed: int  # for the bound's margin (drop_high - drop) to be under a quarter of max_drop
    dev_groups: int | None = None  # groups the bootstrap resampled (--groups), None: rows
    search_texts: int | None = None  # dev texts the point was chosen on, apart from the ``dev_texts`` it was checked on (None: the same)


class CalibrationReport(BaseModel):
    """What ``edgekit exits calibrate`` measured and chose (written as calibration.json).

    ``report["base"]`` and the other keys of the former dict still read (``__getitem__``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    base_quality: float
    metric: str = "accuracy"  # what quality measures (metric_name)
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
    # the target options the latencies were measured with (openvino-cpu's seq_lens/data: sequence buckets);
    # compile the exported point with the same options
    target_options: dict | None = None
    max_drop: float = 1.0
    max_latency_ms: float | None = None
    heads: str = ""
    files: list[str] = []
    exits: list[int] | None = None  # layers whose exits the chosen point keeps (None: all of ``layers``)
    interval: Interval | None = None
    confidence: float | None = None  # one-sided level of the bound the budget was checked on (None: point estimate)
    # --estimate expected: the final exit's probabilities stand in for labels, scaled by this temperature
    # (fit on ``temperature_data``, or 1.0 when no labelled file was given)
    temperature: float | None = None
    temperature_data: str | None = None
    form: str = "segments"  # the exit artifact the latencies were measured on (calibrations before the one graph: segments)
    # the chosen point exported, compiled and timed as deployed against its single graph (see verify_deployed)
    deployed_check: dict | None = None
    # the held-out check's fixed sequence, in order: each point tried (policy spec, exits kept, expected latency
    # ratio and drop bound on the search rows, drop bound on the held-out rows); the first over --max-drop ends it
    held_out_sequence: list[dict] | None = None

    ALIASES: ClassVar[dict[str, str]] = {"base": "base_quality"}

    def __getitem__(self, key: str) -> Any:
        """The former dict's keys (``base``, ``chosen``, ``layers``...), as JSON values."""
        return self.model_dump(mode="json")[self.ALIASES.get(key, key)]


def row_quality(task: str, outputs: np.ndarray, final: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Per row: 1/0 right (labels) or agreeing with the final exit (no labels); cosine to the final output (embeddings).

    A classifier's ``labels`` may instead be an [N, classes] array of the final exit's probabilities
    (:func:`expected_targets`): each row then scores the probability that its prediction is right, if those
    probabilities are calibrated (expected accuracy; the no-exit row scores its top probability).

    An embedding model's ``labels`` make it retrieval (:func:`retrieval_labels`): one value per query, 1/0
    whether its relevant doc ranks first among the docs (recall@1), both sides embedded as deployed; with
    :class:`IndexedDocs` the rows are queries alone, ranked against docs the full model embedded."""
    if task == "classifier":
        if labels is not None and np.ndim(labels) == 2:  # expected accuracy (:func:`expected_targets`)
            return np.asarray(labels, dtype=np.float64)[np.arange(len(outputs)), outputs.argmax(-1)]
        target = labels if labels is not None else final.argmax(-1)
        return (outputs.argmax(-1) == target).astype(np.float64)
    if isinstance(labels, IndexedDocs):  # every row is a query; its doc was embedded by the full model
        return (ranks(outputs, labels.docs) == 1).astype(np.float64)
    if labels is not None:
        docs, queries = np.flatnonzero(labels < 0), np.flatnonzero(labels >= 0)
        rank = ranks(outputs[queries], outputs[docs], np.searchsorted(docs, labels[queries]))
        return (rank == 1).astype(np.float64)
    num = (outputs * final).sum(-1)
    den = np.linalg.norm(outputs, axis=-1) * np.linalg.norm(final, axis=-1)
    return num / np.maximum(den, 1e-12)


def quality(task: str, outputs: np.ndarray, final: np.ndarray, labels: np.ndarray | None) -> float:
    return float(np.mean(row_quality(task, outputs, final, labels)))


@dataclass(frozen=True)
class IndexedDocs:
    """The ``labels`` of retrieval against an index built offline: the docs' embeddings by the model without
    exits (``docs[i]`` is the relevant doc of dev row i, a query); only the queries take exits."""

    docs: np.ndarray


def retrieval_labels(n: int) -> np.ndarray:
    """The ``labels`` of ``n`` query/doc pairs embedded as ``queries + docs``: each query row holds the row
    of its relevant doc, each doc row -1."""
    return np.concatenate([np.arange(n, 2 * n), np.full(n, -1)])


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the negative log-likelihood of ``softmax(logits / T)`` on labelled rows
    (temperature scaling: one parameter, so a few hundred dev texts fit it); searched on a log grid from 0.05
    to 20 (labels the logits do not predict at all give the top of the range), then refined around the best grid point."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(-1, keepdims=True)
        return float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), labels]).mean())

    grid = np.geomspace(0.05, 20.0, 121)
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.geomspace(max(best / 1.06, grid[0]), min(best * 1.06, grid[-1]), 41)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def expected_targets(final_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The ``labels`` of an unlabelled calibration that counts each disagreement by what it is expected to cost:
    the final exit's class probabilities, ``softmax(logits / temperature)`` [N, classes] (:func:`row_quality`)."""
    return softmax(np.asarray(final_logits, dtype=np.float64) / temperature)


def metric_name(task: str, labels: np.ndarray | None) -> str:
    """What a calibration's quality measures, for reports."""
    if task == "classifier" and labels is not None and np.ndim(labels) == 2:
        return "expected accuracy under the final exit's probabilities"
    if task == "classifier":
        return "accuracy" if labels is not None else "agreement with the final exit"
    if isinstance(labels, IndexedDocs):
        return "recall@1 (queries; docs embedded without exits)"
    return "recall@1" if labels is not None else "cosine to the final exit"


class Scorer:
    """Scores operating points on the dev rows as deployed: a policy and its parameter (one value, or one
    per kept exit), the exits kept, the length plan under ``timing``; with ``bound`` (an object with
    ``upper(values) -> float``, e.g. a bootstrap) also the quality's lower bound."""

    def __init__(self, exits, layers, task, labels=None, *, segment_ms=None, lengths=None, timing: Timing | None = None, bound=None):
        self.exits, self.layers, self.task, self.labels = exits, list(layers), task, labels
        self.final = exits[-1]["output"]
        self.base_rows = row_quality(task, self.final, self.final, labels)
        self.base = float(self.base_rows.mean())
        self.cum = np.cumsum(segment_ms) if segment_ms is not None else None
        self.timing, self.bound = timing, bound
        self.rows_b = bucket_of(np.asarray(lengths), timing.buckets) if timing is not None else None
        self.single_ms = float(timing.single_ms[self.rows_b].mean()) if timing is not None else None

    def keep_of(self, exits: list[int] | None) -> list[int] | None:
        """The ``keep`` argument (exit indices before the last) of a point whose kept exit layers are ``exits``."""
        return None if exits is None else [self.layers.index(layer) for layer in exits[:-1]]

    def _run(self, name: str, param, keep: list[int] | None, plan: list[bool] | None = None):
        """(exit index per row among the kept exits, output per row, kept layers, latency, ratio, check);
        ``plan``: the length plan to deploy (per bucket: exits checked), instead of the one these rows imply."""
        last_all = len(self.layers) - 1
        idx = list(range(last_all)) if keep is None else sorted(keep)
        exits = [self.exits[i] for i in idx] + [self.exits[-1]]
        layers = np.asarray(self.layers)[idx + [last_all]]
        timing = self.timing if keep is None or self.timing is None else self.timing.merged(idx)
        last, final, rows_b = len(exits) - 1, self.final, self.rows_b
        exit_at, out = simulate(make(name, param, self.task), exits)
        latency, ratio, check = None, None, None
        if timing is not None:
            on = timing.cum_ms[rows_b, exit_at]  # each row's time with exits checked
            off = timing.chain_ms[rows_b]
            # a bucket no dev text falls in: judged with every row's exit as if it had that length
            check = plan or [
                bool(timing.cum_ms[b, exit_at[rows_b == b] if (rows_b == b).any() else exit_at].mean() < timing.chain_ms[b])
                for b in range(len(timing.buckets))
            ]
            checked = np.asarray(check)[rows_b]
            exit_at = np.where(checked, exit_at, last)
            out = np.where(checked[:, None], out, final)
            latency = float(np.where(checked, on, off).mean())
            ratio = latency / self.single_ms
        elif self.cum is not None and keep is None:
            latency = float(self.cum[exit_at].mean())
        return exit_at, out, layers, latency, ratio, check

    def rows(self, name: str, param, keep: list[int] | None = None, plan: list[bool] | None = None) -> np.ndarray:
        """Per-row quality of a point as deployed."""
        return row_quality(self.task, self._run(name, param, keep, plan)[1], self.final, self.labels)

    def point(self, name: str, param, keep: list[int] | None = None, plan: list[bool] | None = None) -> Point:
        """``keep``: 0-based exits kept before the last (None: all); ``plan``: see :meth:`_run`."""
        exit_at, out, layers, latency, ratio, check = self._run(name, param, keep, plan)
        rows = row_quality(self.task, out, self.final, self.labels)
        low = None if self.bound is None else self.base - self.bound.upper(self.base_rows - rows)
        return Point(
            policy=name,
            param=[float(v) for v in param] if isinstance(param, list | tuple) else float(param),
            quality=float(rows.mean()),
            mean_layers=float(np.mean(layers[exit_at])),
            exit_histogram=np.bincount(exit_at, minlength=len(layers)).tolist(),
            expected_latency_ms=latency,
            latency_ratio=ratio,
            check=check,
            exits=None if keep is None else layers.tolist(),
            quality_low=low,
        )

    def subsets(self, most: int) -> list[list[int]]:
        """Every proper subset of the exits before the last, keeping 1..``most`` of them."""
        from itertools import combinations

        n = len(self.layers) - 1
        return [list(c) for k in range(1, min(most, n - 1) + 1) for c in combinations(range(n), k)]


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
    bound=None,
    subsets: int = 0,
) -> tuple[float, list[Point]]:
    """(quality of the model without exits, every policy x parameter point).

    With ``timing`` (and each dev text's token ``lengths``) a point gets its length plan: exits are
    checked in a bucket only where that is expected to be faster than running every segment
    without checks; its quality, histogram and latency are those of the point as deployed. With
    ``timing`` and ``subsets`` > 0, every subset keeping up to that many exits (besides the last)
    is swept too. ``bound``: see :class:`Scorer`."""
    scorer = Scorer(exits, layers, task, labels, segment_ms=segment_ms, lengths=lengths, timing=timing, bound=bound)
    names = policies or [n for n, p in EXIT_POLICIES.items() if task in p.tasks]
    keeps: list = [None] + (scorer.subsets(subsets) if timing is not None and subsets else [])
    points = [scorer.point(name, param, keep) for keep in keeps for name in names for param in EXIT_POLICIES[name].grid]
    return scorer.base, points


# A point counts as faster than the single graph only when it is expected to save at least this share of its
# latency: ratios of two timed graphs move by 2-5 % between runs on a shared CPU, so a smaller expected saving
# cannot be told from noise (one measured at 1.00x expected ran at 1.02x), and it would ship the segments, a
# second copy of the weights and the exit checks for nothing.
MIN_SAVING = 0.03


def saves(p: Point, single_ms: float | None) -> bool:
    """Whether ``p`` is expected to be at least :data:`MIN_SAVING` faster than the single graph (True without one)."""
    return single_ms is None or p.expected_latency_ms <= (1 - MIN_SAVING) * single_ms


def choose(
    base: float,
    points: list[Point],
    *,
    max_drop: float | None = 1.0,
    max_latency_ms: float | None = None,
    single_ms: float | None = None,
) -> Point | None:
    """The fastest point within ``max_drop`` points of ``base`` (or the most accurate under a latency target).

    With ``single_ms`` (the single graph's measured latency) only points :data:`MIN_SAVING` faster than it count;
    None when there is none, or when the single graph meets the latency target and no point
    is at least as accurate."""
    speed = (lambda p: p.expected_latency_ms) if all(p.expected_latency_ms is not None for p in points) else (lambda p: p.mean_layers)
    faster = [p for p in points if saves(p, single_ms)]
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
    within = [p for p in points if (base - p.budget_quality()) * 100 <= drop + 1e-9]
    if not within:
        best = max(points, key=lambda p: (p.budget_quality(), -speed(p)))
        bound = " (upper confidence bound)" if best.quality_low is not None else ""
        at = f"{best.expected_latency_ms:.2f} ms" if best.expected_latency_ms is not None else f"{best.mean_layers:.2f} layers"
        raise ConfigError(
            f"no operating point stays within --max-drop {drop:g}: the best reachable drop{bound} is "
            f"{100 * (base - best.budget_quality()):.2f} points, at {at} ({best.spec})",
            hint=f"raise --max-drop to at least {100 * (base - best.budget_quality()):.2f}",
        )
    fast = {id(p) for p in faster}
    ok = [p for p in within if id(p) in fast]
    return min(ok, key=lambda p: (speed(p), -p.quality)) if ok else None


def shallowest_within(per_exit_quality: list[float], layers: list[int], max_drop: float) -> int:
    """The shallowest exit whose accuracy alone stays within ``max_drop`` points of the last exit's."""
    best = per_exit_quality[-1]
    return next((layer for q, layer in zip(per_exit_quality, layers) if (best - q) * 100 <= max_drop), layers[-1])


def recommend(
    chosen: Point | None,
    points: list[Point],
    per_exit: list[float],
    layers: list[int],
    max_drop: float,
    single_ms,
    target,
    *,
    base: float | None = None,
):
    """(recommendation, prune layer, one plain sentence) for a calibration's outcome.

    With ``base`` (quality without exits), a point that is faster than the single graph but over
    the budget is named with its drop (the best reachable among the faster ones)."""
    if chosen is not None:
        vs = f" vs {single_ms:.2f} ms for the single graph ({chosen.latency_ratio:.2f}x)" if single_ms is not None else ""
        lat = f", expected {chosen.expected_latency_ms:.2f} ms on {target}{vs}" if chosen.expected_latency_ms is not None else ""
        kept = f", exits at layers {','.join(map(str, chosen.exits))}" if chosen.exits is not None else ""
        low = f" (bound {100 * chosen.quality_low:.2f}%)" if chosen.quality_low is not None else ""
        return "exits", None, f"early exit {chosen.spec}: {100 * chosen.quality:.2f}%{low}, {chosen.mean_layers:.2f} layers{kept}{lat}"
    if single_ms is None:  # no timing (every point counts as faster): none held the budget
        return depth_cut_or_none(per_exit, layers, max_drop)
    fastest = min(points, key=lambda p: p.expected_latency_ms)
    faster = [p for p in points if saves(p, single_ms)]
    if base is not None and faster:
        best = max(faster, key=lambda p: (p.budget_quality(), -p.expected_latency_ms))
        why = (
            f"no exit policy within {max_drop:g} points is at least {MIN_SAVING:.0%} faster than the single graph on {target} ({single_ms:.2f} ms; "
            f"the best faster one, {best.spec}, drops {100 * (base - best.budget_quality()):.2f} points at {best.expected_latency_ms:.2f} ms)"
        )
    else:
        why = (
            f"no exit policy is at least {MIN_SAVING:.0%} faster than the single graph on {target} ({single_ms:.2f} ms; "
            f"fastest policy {fastest.spec}: {fastest.expected_latency_ms:.2f} ms)"
        )
    layer = shallowest_within(per_exit, layers, max_drop)
    if layer < layers[-1]:
        return "prune", layer, f"{why}: ship the depth cut at layer {layer} (edgekit exits prune --layer {layer}), or no exits"
    return "none", None, f"{why}, and no depth cut stays within {max_drop:g} points: ship the model without exits"


def depth_cut_or_none(per_exit: list[float], layers: list[int], max_drop: float) -> tuple[str, int | None, str]:
    """(recommendation, prune layer, advice) where no exit policy is shipped: the shallowest depth cut within the
    budget, or the model without exits."""
    layer = shallowest_within(per_exit, layers, max_drop)
    if layer < layers[-1]:
        return "prune", layer, f"ship the depth cut at layer {layer} (edgekit exits prune --layer {layer}), or no exits"
    return "none", None, "ship the model without exits"


def save(report: CalibrationReport, out: Path) -> list[Path]:
    """calibration.json and calibration.png (quality vs expected layers and latency, the chosen point's
    interval; latency per length bucket)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "calibration.json"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        from edgekit.build.exits.plot import plot

        plot(plt, report, out / "calibration.png")
        files.append(out / "calibration.png")
    report = report.model_copy(update={"files": [str(f) for f in files]})
    (out / "calibration.json").write_text(report.model_dump_json(indent=2) + "\n")
    return files


def verify_deployed(report: CalibrationReport, exit_ms: float, single_ms: float, texts: int) -> CalibrationReport:
    """``report`` with its chosen point checked as deployed: the artifact exported with that point (its exits,
    thresholds and length plan), compiled for the target and timed at batch 1 on ``texts`` calibration texts
    against the single graph it ships, interleaved (``exit_ms``, ``single_ms``: means). Expected latency is a
    model: a point that keeps some exits is costed from the all-exit graph with the removed boundaries' share
    taken off, and on OpenVINO with the 1-bit kernel that share was measured well off (a point expected at
    0.96x ran at 1.07-1.11x). A point that does not save :data:`MIN_SAVING` as deployed is dropped and the
    recommendation is made as if no point had saved time; ``deployed_check`` records the measurement."""
    ratio = exit_ms / single_ms
    check = {"exit_ms": exit_ms, "single_ms": single_ms, "ratio": ratio, "texts": texts, "kept": ratio <= 1 - MIN_SAVING}
    if report.chosen is None or check["kept"]:
        return report.model_copy(update={"deployed_check": check})
    chosen = report.chosen
    rec, layer, ship = depth_cut_or_none(report.per_exit_quality, report.layers, report.max_drop)
    expected = f" (expected {chosen.latency_ratio:.2f}x)" if chosen.latency_ratio is not None else ""
    why = (
        f"the chosen point {chosen.spec}{expected} ran at {ratio:.2f}x the single graph as deployed on {report.target} "
        f"({exit_ms:.2f} against {single_ms:.2f} ms, {texts} texts), not {MIN_SAVING:.0%} faster: "
    )
    return report.model_copy(
        update={
            "chosen": None,
            "recommendation": rec,
            "prune_layer": layer,
            "message": why + ship,
            "exits": None,
            "length_plan": None,
            "interval": None,
            "deployed_check": check,
        }
    )

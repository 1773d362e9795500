"""Choosing an early-exit operating point that holds on unseen data.

The budget (``max_drop``) is checked on an upper confidence bound of the drop, not on its point
estimate: the drop of a point against the model without exits is bootstrapped over the dev rows
(paired: both are scored on the same resampled rows; seeded Poisson bootstrap, 1,000 resamples
by default), and the bound is its one-sided ``confidence`` quantile. So a point chosen at 90 %
stays within the budget on fresh data from the same distribution with about 90 % probability
(the usual bootstrap caveats: the dev rows must be a fair sample, and the choice among many
points makes the chosen one's bound a little optimistic).

Rows are often not independent: texts of one source (one product's reviews, one software suite's
packages, one customer's tickets) are alike, and a split by source makes dev a sample of sources.
Then a row bootstrap is far too sure of itself; with ``groups`` (one id per dev row, ``exits
calibrate --groups FIELD``) the bootstrap resamples whole groups (each group's rows share one
Poisson weight), the cluster bootstrap, and the bound widens to what the groups support.

Besides one parameter for every exit, the search considers keeping only some exits (each
boundary between segments costs time at short lengths: :meth:`Timing.merged`) and, from each
policy's best point, one threshold per exit, tuned by coordinate search on dev.

Choosing and bounding on the same rows is optimistic: among hundreds of points, the fastest one
whose bound fits is favoured for a bound that came out low by chance, and the dev-size check
that guards against it refuses whenever the fastest point's bound is wide, even where a slower
point's would fit. So by default (``holdout``
0.5) the dev rows are split (whole groups when given, seeded): the search runs on one part; its
points that save time and lie on the search part's frontier (each faster than every point with a
smaller drop bound) are then checked on the held-out part in a fixed order, from the smallest
drop on the search part, and the sequence stops at the first point whose held-out bound exceeds
the budget; the fastest point before it is chosen. This is the fixed-sequence test of Learn then
Test (Angelopoulos et al., 2021), the way CALM (Schuster et al., 2022) calibrates its exits: the
order is fixed before the held-out rows are seen, so the chosen point's bound holds at the asked
confidence (as far as a bootstrap bound is a valid test: its usual caveats). Measured on dev
alone (bench/exit_coverage.py: choose on half of dev's source packages, score on the other half,
40 splits; four heads on debian-sections and debian-works-with; bench/results/exits-coverage),
with a 90 % group bound and a 1-point budget it chose a point on 131 of 160 halves and overshot
on 14 of those (11 %; 4 of 24 on the smallest, ~170-text halves). The same-rows choice chose on
36 (its bound's margin alone exceeded the budget on the rest) and overshot on 3 of those. (Those 40
splits ran the sequence before the frontier filter; on 20 splits of the current heads, the frontier
overshot on 7 of 62 chosen points against 6 of 62 for the unfiltered sequence, and chose points
that leave earlier: bench/results/exits-dev-margin.)
``holdout`` 0 restores the same-rows choice; a retrieval metric (every doc ranked for every
query) is not split.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.deploy.exits.policies import EXIT_POLICIES
from edgekit.deploy.files import undone_on_failure
from edgekit.errors import ConfigError, DataError

MIN_DEV_TEXTS = 30  # below this a bootstrap interval means little, whatever it says
# the held-out sequence's least step: a point must save this share of the model's layers over the point before
# it (see frontier, HeldOut.choose)
FRONTIER_STEP = 0.02
HOLDOUT = 0.5  # share of the dev rows (whole groups) held out to check the chosen point's bound
MIN_RESAMPLES = 100  # fewer bootstrap resamples put a 90 % quantile on a handful of values
# how an unlabelled calibration counts a row whose exit disagrees with the final exit: as a loss (agreement),
# or by the final exit's probability that the exit's class is right (expected; see calibrate.row_quality)
ESTIMATES = ("agreement", "expected")


def check_estimate(estimate: str, unsupervised: bool, temperature_data) -> None:
    """Refuse an ``--estimate`` / ``--temperature-data`` combination before any model work."""
    if estimate not in ESTIMATES:
        raise ConfigError(f"unknown --estimate {estimate!r}", hint=f"use one of: {', '.join(ESTIMATES)}")
    if estimate == "expected" and not unsupervised:
        raise ConfigError(
            "--estimate expected reads the final exit's probabilities in place of labels: it needs --unsupervised",
            hint="add --unsupervised for an unlabelled sample, or drop --estimate (labels measure accuracy itself)",
        )
    if temperature_data is not None and estimate != "expected":
        raise ConfigError(
            "--temperature-data scales the probabilities that --estimate expected reads",
            hint="add --estimate expected, or drop --temperature-data",
        )


class Bootstrap:
    """Seeded Poisson bootstrap over ``n`` rows: ``resamples`` weight vectors, reused for every point
    (so points are compared on the same resamples). With ``groups`` (an id per row) the weights are
    drawn per group and every row of a group takes its group's weight (cluster bootstrap)."""

    def __init__(self, n: int, confidence: float = 0.9, resamples: int = 1000, seed: int = 0, groups=None) -> None:
        if not 0.5 <= confidence < 1:
            raise ConfigError(
                f"confidence {confidence:g} out of range", hint="use a one-sided level in [0.5, 1), e.g. 0.9, or 0 for the point estimate"
            )
        check_resamples(resamples)
        rng = np.random.default_rng(seed)
        self.n, self.confidence, self.resamples = n, confidence, resamples
        self.groups: int | None = None
        if groups is None:
            self.weights = np.minimum(rng.poisson(1.0, (resamples, n)), 255).astype(np.uint8)
        else:
            if len(groups) != n:
                raise DataError(f"{len(groups)} group ids for {n} dev rows", hint="give one group id per dev row")
            _, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
            self.groups = int(index.max()) + 1
            per_group = np.minimum(rng.poisson(1.0, (resamples, self.groups)), 255).astype(np.uint8)
            self.weights = per_group[:, index]
        self.totals = np.maximum(self.weights.sum(1, dtype=np.float64), 1.0)

    def means(self, values: np.ndarray) -> np.ndarray:
        """The mean of ``values`` (one per row) under each resample."""
        nz = np.flatnonzero(values)
        if not len(nz):
            return np.zeros(self.resamples)
        return (self.weights[:, nz].astype(np.float64) @ np.asarray(values, np.float64)[nz]) / self.totals

    def upper(self, values: np.ndarray) -> float:
        return float(np.quantile(self.means(values), self.confidence))

    def lower(self, values: np.ndarray) -> float:
        return float(np.quantile(self.means(values), 1 - self.confidence))


class DevSetTooSmall(DataError):
    """A dev set too small for the bound on the drop to mean anything at the asked confidence."""


def dev_texts_needed(n: int, margin: float, max_drop: float) -> int:
    """Dev texts for the bound's margin (points above the point estimate) to be under a quarter of
    ``max_drop``: the margin shrinks as 1/sqrt(n) (with groups: as 1/sqrt(groups), so this many texts
    drawn from proportionally more groups)."""
    target = max(max_drop, 1e-6) / 4
    return max(MIN_DEV_TEXTS, math.ceil(n * (margin / target) ** 2))


def check_dev_size(n: int, margin: float, max_drop: float, confidence: float, unit: str = "texts") -> None:
    """Refuse a dev set whose bound alone would take the whole budget (or too few rows to bootstrap);
    ``unit`` names the rows the bound resamples (texts, or query/doc pairs)."""
    if n >= MIN_DEV_TEXTS and margin <= max_drop:
        return
    needed = dev_texts_needed(n, margin, max_drop)
    why = (
        f"{n} {unit} are fewer than {MIN_DEV_TEXTS}"
        if n < MIN_DEV_TEXTS
        else f"on {n} {unit} the bound adds {margin:.2f} points, more than the budget"
    )
    raise DevSetTooSmall(
        f"dev set too small for a {100 * confidence:g}% bound on the drop ({why}): about {needed} {unit} needed",
        hint=f"give about {needed} dev {unit}, or pass --confidence 0 to choose on the point estimate",
    )


def tune_per_exit(scorer: cal.Scorer, start: cal.Point, admissible, speed, rounds: int = 3) -> cal.Point | None:
    """One threshold per exit, from ``start`` (a point with one threshold for every exit): per exit in
    turn, the grid value that makes the point fastest while it stays ``admissible``; repeated until
    no exit changes (at most ``rounds`` passes). None when no vector beats ``start``."""
    grid = EXIT_POLICIES[start.policy].grid
    keep = scorer.keep_of(start.exits)
    n = (len(scorer.layers) if keep is None else len(keep) + 1) - 1
    vec = list(start.param) if isinstance(start.param, list) else [start.param] * n
    best = start
    for _ in range(rounds):
        changed = False
        for k in range(n):
            for v in grid:
                if v == vec[k]:
                    continue
                trial = [*vec[:k], float(v), *vec[k + 1 :]]
                p = scorer.point(start.policy, trial, keep)
                if admissible(p) and speed(p) < speed(best) - 1e-12:
                    best, vec, changed = p, trial, True
        if not changed:
            break
    return None if best is start else best


def search(
    scorer: cal.Scorer,
    policies: list[str] | None,
    *,
    max_drop: float,
    subsets: int = 3,
    per_exit: bool = True,
    progress=None,
) -> list[cal.Point]:
    """Every policy x grid point (on every exit subset of up to ``subsets`` exits, with a timing), then
    a per-exit vector tuned from each policy's fastest point within ``max_drop``; ``progress(stage, done,
    total)`` as it goes."""
    say = progress or (lambda stage, done, total: None)
    names = policies or [n for n, p in EXIT_POLICIES.items() if scorer.task in p.tasks]
    keeps: list = [None] + (scorer.subsets(subsets) if scorer.timing is not None and subsets else [])
    grid = [(name, param, keep) for keep in keeps for name in names for param in EXIT_POLICIES[name].grid]
    points = []
    for k, (name, param, keep) in enumerate(grid, 1):
        points.append(scorer.point(name, param, keep))
        say("scoring operating points", k, len(grid))
    if not per_exit or len(scorer.layers) < 3:
        return points
    timed = all(p.expected_latency_ms is not None for p in points)

    def speed(p):
        return p.expected_latency_ms if timed else p.mean_layers

    def admissible(p):
        fast = cal.saves(p, scorer.single_ms)
        return fast and (scorer.base - p.budget_quality()) * 100 <= max_drop + 1e-9

    for k, name in enumerate(names, 1):
        ok = [p for p in points if p.policy == name and admissible(p)]
        if ok:
            tuned = tune_per_exit(scorer, min(ok, key=speed), admissible, speed)
            points += [tuned] if tuned is not None else []
        say("per-exit thresholds", k, len(names))
    return points


def check_resamples(resamples: int) -> None:
    if resamples < MIN_RESAMPLES:
        raise ConfigError(f"--resamples {resamples}: too few for a bootstrap bound", hint=f"use at least {MIN_RESAMPLES} (default 1000)")


def check_subsets(subsets: int) -> None:
    if subsets < 0:
        raise ConfigError(f"--subsets {subsets} is negative", hint="use 0 (every exit kept) or how many exits to keep at most, e.g. 3")


def check_holdout(holdout: float) -> None:
    if not 0 <= holdout <= 0.8:
        raise ConfigError(
            f"holdout {holdout:g} out of range",
            hint="use a share of the dev rows up to 0.8, e.g. 0.5, or 0 to bound on the rows searched",
        )


def split_rows(n: int, holdout: float, groups=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(search rows, held-out rows): about ``holdout`` of the rows held out, whole groups at a time when
    ``groups`` (one id per row) is given; seeded, so a calibration is reproducible."""
    rng = np.random.default_rng(seed)
    if groups is None:
        held = rng.random(n) < holdout
    else:
        names, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        held = (rng.random(len(names)) < holdout)[index]
    return np.flatnonzero(~held), np.flatnonzero(held)


def rows_of(exits: list[dict[str, np.ndarray]], idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Every exit's outputs on the rows ``idx`` only."""
    return [{k: v[idx] for k, v in e.items()} for e in exits]


def frontier(order: list, speed, step: float = 0.0) -> list:
    """The points of ``order`` (sorted by the drop bound on the search rows) that are faster than every point
    before them, by more than ``step`` than the last one kept: the search rows' frontier of drop against
    speed, thinned. A point off it is slower than a point with a smaller bound, so it is not worth a test: in
    the fixed sequence it could only stop the sequence early (one held-out test that fails by chance).
    Measured on dev halves (bench/results/exits-dev-margin), the frontier goes further on the same rows at
    about the same overshoot rate. A point that saves less than ``step`` over the one before it is
    the same bet again for next to nothing: left out, the sequence has fewer tests to fail by chance."""
    kept, fastest = [], math.inf
    for p in order:
        if speed(p) < fastest - step:  # the first point always: fastest starts at infinity
            kept.append(p)
            fastest = speed(p)
    return kept


class HeldOut:
    """The held-out check of :mod:`this module <edgekit.build.exits.operating>`: points come from a search
    on ``search`` rows and are checked, in a fixed order, on the held-out ``check`` rows."""

    def __init__(self, exits, layers, task, labels, *, lengths, timing, holdout, confidence, resamples, groups=None) -> None:
        n = len(exits[-1]["output"])
        self.layers = max(layers)
        self.search_idx, self.check_idx = split_rows(n, holdout, groups)
        for what, idx in (("search", self.search_idx), ("held-out", self.check_idx)):
            if len(idx) < MIN_DEV_TEXTS:
                needed = math.ceil(MIN_DEV_TEXTS / min(holdout, 1 - holdout))
                raise DevSetTooSmall(
                    f"dev set too small for a {100 * confidence:g}% bound on held-out rows: {len(idx)} {what} texts of {n}, "
                    f"fewer than {MIN_DEV_TEXTS}: about {needed} texts needed",
                    hint=f"give about {needed} dev texts, or pass --holdout 0 to bound on the rows the point was chosen on",
                )

        def part(idx, boot):
            sub = None if labels is None else np.asarray(labels)[idx]
            return cal.Scorer(rows_of(exits, idx), layers, task, sub, lengths=np.asarray(lengths)[idx], timing=timing, bound=boot)

        def boot(idx):
            return Bootstrap(len(idx), confidence, resamples, groups=None if groups is None else np.asarray(groups)[idx])

        self.search_boot, self.check_boot = boot(self.search_idx), boot(self.check_idx)
        self.search, self.check = part(self.search_idx, self.search_boot), part(self.check_idx, None)

    def drop_high(self, p: cal.Point) -> float:
        """Upper bound (points) of ``p``'s drop on the held-out rows, deployed with ``p``'s own length plan."""
        rows = self.check.rows(p.policy, p.param, self.check.keep_of(p.exits), p.check)
        return 100 * self.check_boot.upper(self.check.base_rows - rows)

    def choose(self, points: list[cal.Point], max_drop: float) -> tuple[cal.Point | None, list[tuple[cal.Point, float]]]:
        """(the fastest point of the sequence's passing prefix, or None; every point tried with its held-out
        bound). ``points`` were scored on the search rows; the sequence holds those that save time, from
        the smallest drop bound there (the deeper first among equals), each shallower than every point before
        it by more than the step (:func:`frontier`); among the points that held, the fastest is chosen (by
        measured latency when timed).

        The sequence is ordered and thinned by mean layers, not by measured latency: a timing re-measured on a
        shared CPU moved points on and off a latency frontier, and the sequence ends at its first failure, so
        one marginal point decided how far it went. Two calibrations of one task on openvino-cpu chose 0.67x
        and 0.41x that way; recomputed with the timings of 19 saved calibrations of two tasks, the layer order
        chose one point per task every time, on average 0.01 of the single graph faster
        (bench/exit_sequence.py, bench/results/exits-ov-buckets). Layers are what bench/exit_coverage.py's
        splits measured the sequence's overshoot on."""
        timed = all(p.expected_latency_ms is not None for p in points)
        layers = lambda p: p.mean_layers  # noqa: E731
        passed, tried = run_sequence(self.sequence(points, layers, FRONTIER_STEP * self.layers), self.drop_high, max_drop)
        fastest = (lambda p: p.expected_latency_ms) if timed else layers
        return (min(passed, key=fastest) if passed else None), tried

    def sequence(self, points: list[cal.Point], speed, step: float) -> list[cal.Point]:
        """The points that save time, from the smallest drop bound on the search rows (the slower by ``speed`` first
        among equals), thinned to the frontier of ``speed`` by ``step``."""
        s = self.search
        ordered = sorted((p for p in points if cal.saves(p, s.single_ms)), key=lambda p: (s.base - p.budget_quality(), -speed(p)))
        return frontier(ordered, speed, step)


def run_sequence(order: list, drop_high, max_drop: float) -> tuple[list, list]:
    """The fixed-sequence test: (the points of ``order`` before the first whose held-out bound ``drop_high(p)``
    exceeds ``max_drop``; every point tried with its bound)."""
    tried, passed = [], []
    for p in order:
        high = drop_high(p)
        tried.append((p, high))
        if high > max_drop + 1e-9:
            break
        passed.append(p)
    return passed, tried


def interval(scorer: cal.Scorer, chosen: cal.Point, boot: Bootstrap, max_drop: float, search_texts: int | None = None) -> cal.Interval:
    """The chosen point's dev quality and drop with their bootstrap bounds (on ``scorer``'s rows: the held-out
    ones where the point was searched on ``search_texts`` others), and the dev size needed."""
    keep = scorer.keep_of(chosen.exits)
    rows = scorer.rows(chosen.policy, chosen.param, keep, chosen.check)
    drop = 100 * (scorer.base - float(rows.mean()))
    drop_high = 100 * boot.upper(scorer.base_rows - rows)
    return cal.Interval(
        confidence=boot.confidence,
        resamples=boot.resamples,
        quality=float(rows.mean()),
        quality_low=boot.lower(rows),
        quality_high=boot.upper(rows),
        drop=drop,
        drop_high=drop_high,
        dev_texts=boot.n,
        dev_texts_needed=dev_texts_needed(boot.n, drop_high - drop, max_drop),
        dev_groups=boot.groups,
        search_texts=search_texts,
    )


def report(
    exits: list[dict[str, np.ndarray]],
    layers: list[int],
    task: str,
    labels: np.ndarray | None,
    *,
    lengths: np.ndarray,
    timing: cal.Timing | None = None,
    max_drop: float = 1.0,
    max_latency_ms: float | None = None,
    policies: list[str] | None = None,
    confidence: float | None = 0.9,
    resamples: int = 1000,
    subsets: int = 3,
    per_exit: bool = True,
    groups=None,
    holdout: float = HOLDOUT,
    progress=None,
    **fields,
) -> cal.CalibrationReport:
    """The whole choice on precomputed exit outputs (and a target's ``timing``): points, the bound
    (over ``groups`` when given: one id per row), the chosen point, the recommendation. ``fields``:
    data, target, heads (for the report); ``progress(stage, done, total)``: the search's progress."""
    final = exits[-1]["output"]
    n = len(cal.row_quality(task, final, final, labels))  # the rows a bound resamples (queries, for retrieval)
    boot = Bootstrap(n, confidence, resamples, groups=groups) if confidence else None
    scorer = cal.Scorer(exits, layers, task, labels, lengths=lengths, timing=timing, bound=boot)
    tune = per_exit and max_latency_ms is None
    points = search(scorer, policies, max_drop=max_drop, subsets=subsets, per_exit=tune, progress=progress)
    held = None
    if boot is not None and holdout and max_latency_ms is None and (task == "classifier" or labels is None):
        held = HeldOut(
            exits,
            layers,
            task,
            labels,
            lengths=lengths,
            timing=timing,
            holdout=holdout,
            confidence=boot.confidence,
            resamples=resamples,
            groups=groups,
        )
        say = progress or (lambda stage, done, total: None)
        found = search(
            held.search,
            policies,
            max_drop=max_drop,
            subsets=subsets,
            per_exit=tune,
            progress=lambda st, d, t: say(f"{st} (search half)", d, t),
        )
        pick, tried = held.choose(found, max_drop)
    if boot is not None:  # the point-estimate choice tells how wide the bound is at this dev size
        within = [p for p in points if p.exits is None and (scorer.base - p.quality) * 100 <= max_drop + 1e-9]
        first = min(within, key=lambda p: p.mean_layers, default=None)
        if first is not None and (held is None or pick is None):  # held out: only when no point held its bound
            unit = "query/doc pairs" if task == "embedding" and labels is not None else "texts"
            check_dev_size(boot.n, 100 * (first.quality - first.quality_low), max_drop, boot.confidence, unit)
    per_exit_q = [cal.quality(task, e["output"], exits[-1]["output"], labels) for e in exits]
    single_ms, extra = scorer.single_ms, {}
    if timing is not None:
        rows_b = scorer.rows_b
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
    if held is None:
        chosen = cal.choose(scorer.base, points, max_drop=max_drop, max_latency_ms=max_latency_ms, single_ms=single_ms)
    else:  # the held-out choice, shown on every dev row with the plan it was checked with
        cal.choose(scorer.base, points, max_drop=max_drop, single_ms=single_ms)  # a budget no point meets even on all rows: its error
        chosen = None
        if pick is not None:
            full = scorer.point(pick.policy, pick.param, scorer.keep_of(pick.exits), pick.check)
            chosen = replace(full, quality_low=scorer.base - held.drop_high(pick) / 100)
            points = [*points, chosen]
    rec, layer, message = cal.recommend(chosen, points, per_exit_q, layers, max_drop, single_ms, fields.get("target"), base=scorer.base)
    if held is not None and pick is None and tried:
        first, high = tried[0]
        message = (
            f"no point that saves time held the budget on {len(held.check_idx)} held-out dev texts "
            f"(the first tried, {first.spec}, {high:.2f} points at the {100 * boot.confidence:g}% bound): " + message
        )
    if held is not None:
        extra["held_out_sequence"] = [
            {
                "point": p.spec,
                "exits": p.exits,
                "latency_ratio": p.latency_ratio,
                "mean_layers": p.mean_layers,
                "search_drop_bound": 100 * (held.search.base - p.budget_quality()),
                "held_out_drop_bound": high,
            }
            for p, high in tried
        ]
    if chosen is not None:
        extra["exits"] = chosen.exits
        if chosen.check is not None:
            extra["length_plan"] = {"buckets": timing.buckets, "check": chosen.check}
        if held is not None:
            extra["interval"] = interval(held.check, chosen, held.check_boot, max_drop, search_texts=len(held.search_idx))
        elif boot is not None:
            extra["interval"] = interval(scorer, chosen, boot, max_drop)
    return cal.CalibrationReport(
        base_quality=scorer.base,
        metric=cal.metric_name(task, labels),
        layers=layers,
        per_exit_quality=per_exit_q,
        points=points,
        chosen=chosen,
        recommendation=rec,
        message=message,
        prune_layer=layer,
        max_drop=max_drop,
        max_latency_ms=max_latency_ms,
        confidence=boot.confidence if boot is not None else None,
        **extra,
        **fields,
    )


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
    confidence: float | None = 0.9,
    resamples: int = 1000,
    subsets: int = 3,
    per_exit: bool = True,
    latency_texts: int = 100,
    rounds: int = 3,
    groups: str | None = None,
    holdout: float = HOLDOUT,
    queries_only: bool = False,
    form: str = "graph",
    estimate: str = "agreement",
    temperature_data: str | Path | None = None,
    target_options: dict | None = None,
    progress=None,
) -> cal.CalibrationReport:
    """``edgekit exits calibrate``: exit outputs on ``data_file``, latencies measured on ``target`` (per
    length bucket, beside the single graph), then :func:`report`; writes calibration.json/.png.

    ``queries_only`` (an embedding model, a file of query/doc pairs): the docs are embedded once by the model
    without exits, as an index built offline is, and only the queries take exits: quality is their recall@1
    against that index, latency theirs. ``form``: the exit artifact whose latency is measured (``graph``: the
    exits decided inside one graph; ``segments``); the export of the chosen point uses it. ``progress(stage, done, total)``: each stage's progress (exit outputs,
    latency on the target, the search).

    ``estimate="expected"`` (a classifier, ``unsupervised``): a row whose exit disagrees with the final exit costs
    the final exit's probability of its class minus that of the exit's class, not a whole point; those
    probabilities are temperature-scaled on ``temperature_data`` (a labelled file) when given. The budget then
    holds if the final exit's scaled probabilities are calibrated on the sample's texts.

    ``target_options``: ``target``'s compile options for the timed artifacts (e.g. openvino-cpu's ``data`` or
    ``seq_lens``: sequence buckets, one-graph form only); the exported point is to be compiled with them."""
    from edgekit.build.exits.dev import measure_target, texts_and_labels
    from edgekit.build.exits.model import load_exits
    from edgekit.build.exits.onegraph import check_form
    from edgekit.build.exits.segments import torch_exits

    check_form(form)  # before any model work
    check_target_options(target, target_options, form)
    check_holdout(holdout)
    check_subsets(subsets)
    if confidence:
        check_resamples(resamples)
    check_estimate(estimate, unsupervised, temperature_data)
    if temperature_data is not None:
        from edgekit.deploy import data

        if not Path(temperature_data).is_file():
            raise DataError(f"{temperature_data}: no such file (--temperature-data)", hint="give a labelled dev file of the task")
        if data.kind(temperature_data) != "labeled":  # fail before any model work
            raise DataError(
                f"{temperature_data}: --temperature-data needs labelled rows ('text' and 'label')",
                hint="give a labelled dev file of the task (a few hundred texts fit the one temperature)",
            )
    model = load_exits(heads)
    if estimate == "expected" and model.task != "classifier":
        raise ConfigError(
            f"--estimate expected reads class probabilities: {heads} is an {model.task} model's heads",
            hint="drop --estimate (an embedding model's unlabelled quality is the cosine to the final exit)",
        )
    out = Path(out)
    say = progress or (lambda stage, done, total: None)
    if queries_only:
        texts, labels = indexed_queries(model, data_file, unsupervised, lambda d, t: say("docs, without exits", d, t))
    else:
        texts, labels = texts_and_labels(
            data_file,
            None if unsupervised else list(model.encoder.info.labels or []),
            need_labels=model.task == "classifier" and not unsupervised,
            retrieval=model.task == "embedding" and not unsupervised,
        )
    group_ids = None
    if groups is not None:
        if not confidence:
            raise ConfigError(
                "--groups bootstraps the bound: it needs a --confidence level", hint="drop --groups, or pass --confidence 0.9"
            )
        from edgekit.deploy.data import read_field

        group_ids = read_field(data_file, groups)  # before any model work: a missing field fails fast
    feed = model.encoder.tokenize(texts, max_length=model.encoder.info.max_length)
    exits = torch_exits(model, feed, progress=lambda d, t: say("exit outputs on the dev texts", d, t))
    lengths = feed["attention_mask"].sum(1)
    scaled = {}
    if estimate == "expected":
        temperature = 1.0
        if temperature_data is not None:
            t_texts, t_labels = texts_and_labels(temperature_data, list(model.encoder.info.labels or []), need_labels=True)
            t_feed = model.encoder.tokenize(t_texts, max_length=model.encoder.info.max_length)
            t_final = torch_exits(model, t_feed, progress=lambda d, t: say("final exit on the temperature texts", d, t))[-1]
            temperature = cal.fit_temperature(t_final["output"], np.asarray(t_labels))
        labels = cal.expected_targets(exits[-1]["output"], temperature)
        scaled = {"temperature": temperature, "temperature_data": None if temperature_data is None else str(temperature_data)}
    with undone_on_failure(out):  # the timing artifacts and calibration.json: nothing half-made on an error
        timed = lambda d, t: say(f"latency on {target}", d, t)  # noqa: E731
        timing = (
            measure_target(model, texts, lengths, target, out, latency_texts, rounds, progress=timed, form=form, options=target_options)
            if target
            else None
        )
        r = report(
            exits,
            list(model.config.layers),
            model.task,
            labels if labels is None or isinstance(labels, cal.IndexedDocs) else np.asarray(labels),
            lengths=lengths,
            timing=timing,
            max_drop=max_drop,
            max_latency_ms=max_latency_ms,
            policies=policies,
            confidence=confidence,
            resamples=resamples,
            subsets=subsets,
            per_exit=per_exit,
            groups=group_ids,
            holdout=holdout,
            progress=progress,
            data=str(data_file),
            target=target,
            heads=str(heads),
        )
        r = r.model_copy(update={"form": form, "target_options": target_options or None, **scaled})
        if target and r.chosen is not None:  # the chosen point as deployed: expected latency is a model of it
            from edgekit.build.exits.dev import measure_deployed

            checked = lambda d, t: say(f"the chosen point as deployed on {target}", d, t)  # noqa: E731
            exit_ms, single_ms, n_texts = measure_deployed(
                model, r, texts, lengths, target, out, latency_texts, rounds, progress=checked, options=target_options
            )
            r = cal.verify_deployed(r, exit_ms, single_ms, n_texts)
        files = cal.save(r, out)
        return r.model_copy(update={"files": [str(f) for f in files]})


def check_target_options(target: str | None, options: dict | None, form: str) -> None:
    """Target options need a target, must be ones the target takes, and sequence buckets need the one graph."""
    if not options:
        return
    if target is None:
        raise ConfigError("target options were given without --target", hint="add --target, or drop the options")
    from edgekit.deploy import targets

    resolved = targets.resolve_options(target, options)  # an unknown key or a bad value: a one-line error
    if resolved.sequence_buckets and form != "graph":
        raise ConfigError(f"sequence buckets (seq_lens/data) run the one-graph exit form only, not --form {form}", hint="use --form graph")
    if getattr(resolved, "data", None) is not None:  # a missing, empty or unreadable file: before any model work
        from edgekit.deploy import data

        data.read_texts(resolved.data)


def indexed_queries(model, data_file: str | Path, unsupervised: bool, progress=None) -> tuple[list[str], cal.IndexedDocs]:
    """(the queries, their docs embedded by the model without exits) of a file of query/doc pairs."""
    from edgekit.build.exits.segments import torch_exits
    from edgekit.deploy import data

    if model.task != "embedding" or unsupervised or data.kind(data_file) != "pairs":
        raise ConfigError(
            f"--queries-only needs an embedding model and a dev file of query/doc pairs (got a {model.task} model, "
            f"{data.kind(data_file)} data{', --unsupervised' if unsupervised else ''})",
            hint="drop --queries-only, or give 'query'/'doc' pairs for an embedding model's heads",
        )
    queries, docs = data.read_pairs(data_file)
    feed = model.encoder.tokenize(docs, max_length=model.encoder.info.max_length)
    return queries, cal.IndexedDocs(torch_exits(model, feed, progress=progress)[-1]["output"])

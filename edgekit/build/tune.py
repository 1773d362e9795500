"""Compile-time autotuning: build a target's candidate variants, keep the fastest that passes parity.

A target offers candidates through its optional ``tune_candidates(options, manifest)`` hook
(:func:`edgekit.deploy.targets.base.tune_candidates`): each one a name and option overrides
(fusion, threads, performance hint, precision, streams, sequence buckets...), or a reason it
cannot run here. :func:`tune` builds every candidate into a scratch folder with the target's own
compile, checks it against PyTorch's parity reference with the compile's tolerance, times the
ones that pass with the target's own runtime, round by round (every candidate back to back each
round, the order reversed every other round, so machine drift hits all alike), and picks the
lowest p50. Options the user set are never varied. Every candidate is recorded (settings, p50,
parity and why, or why skipped), with the full option set that rebuilds the choice with
``tune=off``; nothing that failed parity or could not be built is ever chosen.

The budget (``tune_budget_s``) is checked before each build and each timing round; two rules keep one
slow candidate from outlasting it: a built candidate whose warm call takes over :data:`PROBE_RATIO`
times the default's is skipped before its parity check, and one whose median is over
:data:`DROP_RATIO` times the fastest after a timing round is not timed again.

Candidates change one thing each. Where two or more beat the default, their combination (every winning change
that sets an option no faster one set) is built, checked and timed against the best single one in a second
interleaved pass, and kept only if it beats that one by :data:`MIN_GAIN` there.

The objective is the p50 of one call at batch 1 over inputs at their real lengths: the texts of
the ``data`` option where given, else PyTorch's parity texts, each cut to its own length (padded
to the compiled lengths where ``seq_lens`` fixes them, as the session does).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deploy import data, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.targets.base import TargetOptions
from edgekit.deploy.targets.shapes import row_lengths
from edgekit.deploy.tokenizer import Tokenizer
from edgekit.errors import EdgekitError

MIN_GAIN = 0.02  # a candidate replaces the default only if its p50 is at least this much lower (timing noise)
MIN_ROUNDS = 3
MAX_ROUNDS = 30
MAX_FEEDS = 24  # timing inputs per round
# A candidate whose warm call (on the longest timing input) takes this many times the default's is no contender:
# it is skipped before its parity check and timing, which at that speed would outlast any budget (measured: OpenVINO's
# fp16 inference precision on a CPU that reports FP16 ran a lowered MiniLM at 6.7 s a call against 5.8 ms, and its
# parity check and timing took 21 minutes of a 120 s budget).
PROBE_RATIO = 3.0
WARM_SLACK = 20.0  # a first call (shape preparation included) this many times over the probe's limit is the probe
# After each timing round, a candidate whose median is this many times the fastest one's stops being timed: it
# cannot win by the MIN_GAIN a choice needs, and further rounds of it only spend the budget.
DROP_RATIO = 1.5
# Where two or more candidates beside the default pass, the first timing pass stops at this share of the budget; the
# rest is for their combination (:func:`combine`), built, checked and timed against the best single candidate.
COMBO_SHARE = 0.75

Build = Callable[[TargetOptions, Path], Manifest]  # compile the options into a folder: the manifest, parity not run
Check = Callable[[Path, Manifest, TargetOptions], tuple[bool, str]]  # parity of a built candidate: (passed, why not)
Open = Callable[[Path, Manifest, TargetOptions], Any]  # a Session on a built candidate


def wanted(options: TargetOptions, manifest: Manifest) -> bool:
    """Whether compile tunes: ``tune=on``, or ``auto`` (the default) on a lowered binary/ternary model."""
    mode = getattr(options, "tune", "off")
    return mode == "on" or (mode == "auto" and "lowered" in manifest.settings)


def plan(candidates: list[dict[str, Any]], options: TargetOptions) -> list[dict[str, Any]]:
    """The default candidate first, then the target's: overrides of options the user set dropped
    (those are fixed, unless the candidate names them in ``replaces``: dynamic shapes in place of
    the sequence buckets asked for, say), duplicates and no-ops removed. A candidate that undoes
    one of the default build's changes names that change's manifest setting in ``needs``: where the
    default build did not record it, the candidate would rebuild the default and is skipped."""
    out: list[dict[str, Any]] = [{"name": "default", "options": {}}]
    seen: list[dict[str, Any]] = [{}]
    for cand in candidates:
        fixed = options.model_fields_set - set(cand.get("replaces", ()))
        over = {k: v for k, v in cand.get("options", {}).items() if k not in fixed and getattr(options, k, object()) != v}
        if over in seen and not cand.get("skip"):
            continue
        seen.append(over)
        extra = {key: cand[key] for key in ("skip", "needs") if cand.get(key)}
        out.append({"name": cand["name"], "options": over, **extra})
    return out


def rebuild_options(options: TargetOptions, overrides: dict[str, Any]) -> dict[str, Any]:
    """The option dict that rebuilds a candidate with ``tune=off``: what the user set, the overrides
    on top (an override of None drops the option), JSON-safe."""
    full = {k: getattr(options, k) for k in options.model_fields_set} | overrides | {"tune": "off"}
    return {k: v for k, v in full.items() if v is not None and k != "tune_budget_s"}


def cli_form(opts: dict[str, Any]) -> str:
    """``-o key=value`` flags for an option dict (lists as ``a,b``)."""
    return " ".join(f"-o {k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in opts.items())


def timing_feeds(onnx_dir: Path, manifest: Manifest, options: TargetOptions) -> tuple[list[dict[str, np.ndarray]], str]:
    """(batch-1 feeds at real lengths, where they came from): texts of the ``data`` option, else
    PyTorch's parity texts each cut to its own length (a static export keeps its shape)."""
    data_file = getattr(options, "data", None)
    if data_file is not None:
        texts = data.read_texts(data_file)
        texts = texts[:: max(1, len(texts) // MAX_FEEDS)][:MAX_FEEDS]
        tok = Tokenizer(onnx_dir, manifest)
        return [tok([t]) for t in texts], f"{len(texts)} texts of {data_file}"
    feed, _ = parity.load_reference(onnx_dir / parity.REFERENCE)
    rows = next(iter(feed.values())).shape[0]
    lengths = row_lengths(feed, manifest.tokenizer.pad_id)
    keep = manifest.static_shape is not None
    feeds = [
        {k: np.ascontiguousarray(v[i : i + 1, : None if keep else max(1, int(lengths[i]))]) for k, v in feed.items()} for i in range(rows)
    ]
    return feeds[:MAX_FEEDS], f"{min(rows, MAX_FEEDS)} parity texts"


def tune(
    candidates: list[dict[str, Any]],
    options: TargetOptions,
    feeds: list[dict[str, np.ndarray]],
    workdir: Path,
    *,
    build: Build,
    check: Check,
    open_session: Open,
    budget_s: float,
    feeds_source: str = "",
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build, check and time ``candidates`` (see :func:`plan`); return (the chosen option
    overrides, the record for the manifest's ``settings.tune``)."""
    start = time.perf_counter()
    cands = plan(candidates, options)
    feeds = feeds[:MAX_FEEDS]
    longest = max(feeds, key=lambda f: next(iter(f.values())).size) if feeds else None
    reference: float | None = None  # the default's warm call on the longest input, seconds
    built: list[tuple[dict[str, Any], Path, Manifest, TargetOptions]] = []
    default_settings: dict[str, Any] | None = None  # the default build's manifest settings

    def attempt(i: int, cand: dict[str, Any]) -> None:
        """Build, probe and check candidate ``i``: appended to ``built`` if it passes, else its status says why."""
        nonlocal reference, default_settings
        if cand.get("skip"):
            cand["status"] = "skipped"
            cand["why"] = cand.pop("skip")
            return
        needs = cand.pop("needs", None)
        if needs and default_settings is not None and needs not in default_settings:
            cand.update(status="skipped", why=f"the same build as the default: it made no change to undo (no settings.{needs})")
            return
        if i and time.perf_counter() - start > budget_s:
            cand.update(status="skipped", why=f"time budget: {budget_s:g} s (tune_budget_s) spent before it was built")
            return
        try:
            opts = options.model_copy(update=cand["options"])
            opts = type(options).model_validate(opts.model_dump())
            where = workdir / f"c{i}"
            where.mkdir(parents=True)
            manifest = build(opts, where)
            if i == 0:
                default_settings = manifest.settings
            limit = PROBE_RATIO * reference if i and reference else None
            probe = _probe(open_session, where, manifest, opts, longest, limit) if longest is not None else None
            if i == 0:
                reference = probe
            elif probe is not None and limit is not None and probe > limit:
                cand.update(
                    status="skipped",
                    why=f"no contender: a warm call took {probe * 1e3:.1f} ms against {reference * 1e3:.1f} ms for the default "
                    f"(over {PROBE_RATIO:g}x); parity and timing not run",
                )
                return
            passed, why = check(where, manifest, opts)
        except EdgekitError as err:  # a kernel or runtime feature missing here, a bad combination...
            cand.update(status="skipped", why=err.message)
            return
        except Exception as err:  # recorded with the runtime's own message; the default build re-raises it at compile
            cand.update(
                status="skipped", why=f"build failed: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            )
            return
        cand["parity"] = "pass" if passed else f"fail: {why}"
        if not passed:
            cand.update(status="rejected", why="fails parity")
            return
        built.append((cand, where, manifest, opts))

    with _progress(progress, len(cands)) as bar:
        for i, cand in enumerate(cands):
            bar(f"tune: build {cand['name']}")
            attempt(i, cand)
        # with two or more contenders beside the default a combination may follow: it gets the last quarter of the budget
        first_pass = budget_s * (COMBO_SHARE if len(built) > 2 else 1.0)
        timings, rounds, stopped = _time(built, feeds, open_session, start, first_pass, bar)
        for cand, *_ in built:
            cand.update(status="timed", p50_ms=round(float(np.median(timings[cand["name"]])) * 1e3, 4))
            if cand["name"] in stopped:
                cand["why"] = f"timed {stopped[cand['name']]} round(s), then stopped: over {DROP_RATIO:g}x the fastest candidate's p50"
        chosen = _choose([c for c, *_ in built])
        combo = combine([c for c, *_ in built])
        if combo is not None:
            # the winners together: built and checked like the others (recorded as skipped if the budget is spent),
            # then timed against the best single one in a second interleaved pass (its p50s decide between the two)
            bar(f"tune: build {combo['name']}")
            cands.append(combo)
            attempt(len(cands) - 1, combo)
            if built[-1][0] is combo:
                best = next(b for b in built if b[0] is chosen)
                pair, _, _ = _time([best, built[-1]], feeds, open_session, start, budget_s, bar)
                mine, theirs = (float(np.median(pair[n])) * 1e3 for n in (combo["name"], chosen["name"]))
                combo.update(status="timed", p50_ms=round(mine, 4), against={chosen["name"]: round(theirs, 4)})
                if mine <= theirs * (1 - MIN_GAIN):
                    chosen = combo
    shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "mode": getattr(options, "tune", "on"),
        "budget_s": budget_s,
        "seconds": round(time.perf_counter() - start, 1),
        "objective": f"p50 ms of one call at batch 1 over {len(feeds)} inputs at their real lengths ({feeds_source}), {rounds} rounds",
        "candidates": cands,
        "chosen": chosen["name"] if chosen else None,
    }
    overrides = chosen["options"] if chosen else {}
    record["options"] = rebuild_options(options, overrides)
    record["rebuild"] = cli_form(record["options"])
    return overrides, record


def combine(timed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The candidate that applies every change that beat the default by :data:`MIN_GAIN` at once, fastest first,
    each one that sets an option a faster one already set left out (bf16 and fp16 precision, say); None unless
    two or more go together. Candidates are timed one change at a time; two that each pay may pay together
    (measured: W2E2A8 MiniLM on openvino-cpu on an AMD EPYC, ``unsigned=off`` and ``precision=bf16`` each faster)."""
    default = next((c for c in timed if c["name"] == "default"), None)
    if default is None:
        return None
    wins = sorted((c for c in timed if c is not default and c["p50_ms"] <= default["p50_ms"] * (1 - MIN_GAIN)), key=lambda c: c["p50_ms"])
    names: list[str] = []
    options: dict[str, Any] = {}
    for c in wins:
        if not set(c["options"]) & set(options):
            names.append(c["name"])
            options |= c["options"]
    return {"name": " + ".join(names), "options": options} if len(names) > 1 else None


def _choose(timed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest p50; the default stays unless another beats it by :data:`MIN_GAIN`."""
    if not timed:
        return None
    best = min(timed, key=lambda c: c["p50_ms"])
    default = next((c for c in timed if c["name"] == "default"), None)
    if default is not None and best["p50_ms"] > default["p50_ms"] * (1 - MIN_GAIN):
        return default
    return best


def _probe(
    open_session: Open, where: Path, manifest: Manifest, opts: TargetOptions, feed: dict[str, np.ndarray], limit: float | None = None
) -> float:
    """Seconds of one warm call of a built candidate on ``feed``: the fastest of three, after one that warms it
    (fewer when one is over PROBE_RATIO times ``limit`` seconds: a candidate that slow is not called again; none
    when the call that warms it takes over WARM_SLACK times the limit: OpenVINO's fp16 on a lowered MiniLM took
    25-40 s). A call just over the limit is called again: on a shared 2-core machine one call of a sub-millisecond
    model was seen at 4x its others, which skipped a real contender."""
    with open_session(where, manifest, opts) as session:
        t = time.perf_counter()
        session.infer(feed)
        first = time.perf_counter() - t
        if limit is not None and first > WARM_SLACK * limit:
            return first
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            session.infer(feed)
            best = min(best, time.perf_counter() - t)
            if limit is not None and best > PROBE_RATIO * limit:
                break
    return best


def _time(built, feeds, open_session: Open, start: float, budget_s: float, bar) -> tuple[dict[str, list[float]], int, dict[str, int]]:
    """Per candidate, the seconds of every timed call: sessions open side by side, rounds interleaved;
    the rounds of those stopped early (over :data:`DROP_RATIO` times the fastest median after a round)."""
    sessions = {}
    try:
        for cand, where, manifest, opts in built:
            sessions[cand["name"]] = open_session(where, manifest, opts).__enter__()
            for feed in feeds:  # warm-up: first calls allocate, and bucketed sessions compile lazily
                sessions[cand["name"]].infer(feed)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        names = list(sessions)
        rounds = 0
        stopped: dict[str, int] = {}
        while rounds < MAX_ROUNDS and names:
            if rounds >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
                break
            bar(f"tune: timing round {rounds + 1}")
            for name in names if rounds % 2 == 0 else names[::-1]:
                infer = sessions[name].infer
                for feed in feeds:
                    t = time.perf_counter()
                    infer(feed)
                    times[name].append(time.perf_counter() - t)
            rounds += 1
            fastest = min(float(np.median(times[n])) for n in names)
            for name in [n for n in names if float(np.median(times[n])) > DROP_RATIO * fastest]:
                names.remove(name)
                stopped[name] = rounds
        return times, rounds, stopped
    finally:
        for s in sessions.values():
            s.__exit__(None, None, None)


class _progress:
    """A rich progress line (transient) when ``enabled`` and rich is there; else silent."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._enabled, self._total, self._bar = enabled, total, None

    def __enter__(self) -> Callable[[str], None]:
        if self._enabled:
            try:
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

                self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True)
                self._bar.start()
                self._task = self._bar.add_task("tune", total=None)
            except ImportError:
                self._bar = None
        return self._say

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

"""What a calibration reads and measures: the dev texts (and labels) and, on a target, the batch-1
latency of the segments and of the single graph, per length bucket."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekit.build.exits import calibrate as cal
from edgekit.build.exits.segments import compile_exits, export_segments
from edgekit.deploy import data
from edgekit.deploy.exits.policies import make
from edgekit.errors import DataError


def texts_and_labels(
    path: str | Path, labels: list[str] | None, need_labels: bool = False, *, retrieval: bool = False
) -> tuple[list[str], list[int] | np.ndarray | None]:
    """The texts of ``path`` and, when it is labelled and ``labels`` (the label names) are given, their
    label indices; ``need_labels``: a file without labels is an error. A file of query/doc pairs gives its
    queries then its docs, and with ``retrieval`` the rows' relevant docs (:func:`calibrate.retrieval_labels`)."""
    kind = data.kind(path)
    if kind == "pairs" and not need_labels:
        queries, docs = data.read_pairs(path)
        return queries + docs, cal.retrieval_labels(len(queries)) if retrieval else None
    if kind == "labeled" and labels:
        d = data.read_labeled(path, labels)
        return d.texts, d.labels
    if need_labels:
        raise DataError(
            f"{path}: no 'label' field, but supervised calibration needs labels",
            hint="add labels, or pass --unsupervised to score agreement with the final exit",
        )
    return data.read_texts(path), None


def pick(lengths: np.ndarray, buckets: list[int], n: int) -> list[int]:
    """Up to about ``n`` text indices (fixed seed), every length bucket with texts getting at least a few."""
    order = np.random.default_rng(0).permutation(len(lengths))
    rows_b = cal.bucket_of(lengths[order], buckets)
    picked = []
    for b in range(len(buckets)):
        idx = order[rows_b == b]
        picked += idx[: max(3, round(n * len(idx) / len(lengths)))].tolist() if len(idx) else []
    return picked


def timing_options(target: str):
    """``target``'s options for a timed exit artifact: as compile_exits, idle sessions' threads must not spin."""
    from edgekit.deploy import targets

    fields = targets.get(target).options_model.model_fields
    return targets.resolve_options(target, {"spinning": False} if "spinning" in fields else None)


def timed(run, feed: dict) -> float:
    """Seconds one call of ``run(feed)`` took."""
    t = time.perf_counter()
    run(feed)
    return time.perf_counter() - t


def interleaved(feeds: list[dict], calls: list, rounds: int, progress=None) -> list[np.ndarray]:
    """Each of ``calls`` (feed -> its measurement: seconds, or a vector of them) on every feed, ``rounds`` times,
    text by text, the order reversed every other text and round; five feeds untimed first. One array per call,
    shaped [rounds, feeds, *measurement]; ``progress(done, total)`` after each text of each round."""
    for f in feeds[:5]:  # warm-up
        for call in calls:
            call(f)
    out: list[list[list]] = [[[] for _ in range(rounds)] for _ in calls]
    for r in range(rounds):
        for i, f in enumerate(feeds):
            order = range(len(calls)) if (i + r) % 2 else reversed(range(len(calls)))
            for c in order:
                out[c][r].append(calls[c](f))
            if progress is not None:
                progress(r * len(feeds) + i + 1, rounds * len(feeds))
    return [np.asarray(o, dtype=float) for o in out]


def by_exit(feeds: list[dict], forced, single, exits: int, rounds: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(seconds to each exit, shaped [rounds, feeds, exits]; the single graph's seconds, [rounds * exits, feeds]):
    ``forced(feed, k)`` timed in one pass over the feeds per exit ``k``, interleaved text by text with
    ``single(feed)``, so that no timed call repeats the input shape of the call before it on the same
    model (unless two texts have the same length). ``progress(done, total)`` after each pass."""
    for f in feeds[:5]:  # warm-up
        forced(f, exits - 1)
        single(f)
    to_exit = np.zeros((rounds, len(feeds), exits))
    one = np.zeros((rounds, exits, len(feeds)))
    for r in range(rounds):
        for k in range(exits):
            to_k = lambda g, k=k: forced(g, k)  # noqa: E731
            for i, f in enumerate(feeds):
                if (i + r + k) % 2:
                    one[r, k, i] = timed(single, f)
                    to_exit[r, i, k] = timed(to_k, f)
                else:
                    to_exit[r, i, k] = timed(to_k, f)
                    one[r, k, i] = timed(single, f)
            if progress is not None:
                progress((r * exits + k + 1) * len(feeds), rounds * exits * len(feeds))
    return to_exit, one.reshape(rounds * exits, len(feeds))


def measure_target(
    model,
    texts: list[str],
    lengths: np.ndarray,
    target: str,
    out: Path,
    n: int = 100,
    rounds: int = 3,
    progress=None,
    form: str = "graph",
    options: dict | None = None,
) -> cal.Timing:
    """Batch-1 latency on ``target`` per length bucket: the exit artifact of ``form`` to each exit (exit
    checks included) and the single graph of the same model (the one the exit artifact ships, compiled
    with it), timed on the same texts at their own lengths, interleaved text by text (median over
    ``rounds``; ``progress(done, total)`` after each text of each round). Without exit checks the
    deployed controller runs that single graph, so the no-checks latency (``chain_ms``) is the single
    graph's.

    Segments: one pass runs every segment and stamps the end of each. One graph: calibration's timing
    graph (:func:`edgekit.build.exits.onegraph.Flat`) is called with every row forced out at one exit,
    the policy's arithmetic run at every exit before it: a pass over the texts per exit, so that each
    timed call follows a call at another text's length, as deployed calls do. (Timing the six exits of
    one text back to back, only the first call paid for the new input shape: on OpenVINO every later
    exit read 3-17 % of the single graph too cheap; bench/exit_timing_order.py,
    bench/results/exits-shape-timing.) The single graph is timed beside every pass. ``options``: the target's
    compile options for both (e.g. openvino-cpu's sequence buckets)."""
    from edgekit.deploy.runtime import Predictor

    form = "graph" if form == "both" else form  # "both" answers single inputs with the one graph: time that
    # in the one graph a positive threshold keeps the entropy computed at every exit, as a deployed policy does
    never = make("entropy", 1e-6 if form == "graph" else 0.0) if model.task == "classifier" else make("learned", 1.0)
    art = out / form
    export_segments(model, never, art / "onnx", form=form, timing=form == "graph")
    compile_exits(art / "onnx", target, art / target, options=options)
    opts = timing_options(target)
    max_len = int(lengths.max())
    buckets = [b for b in cal.BUCKETS if b < max_len] + [next((b for b in cal.BUCKETS if b >= max_len), max_len)]
    picked = pick(lengths, buckets, n)
    exits = len(model.config.layers)
    with Predictor(art / target, options=opts) as seg:
        ctl = seg.exits
        one = ctl.single

        feeds = [seg.tokenizer([texts[i]]) for i in picked]
        if form == "segments":
            t_cum, t_one = interleaved(feeds, [ctl.timed_chain, lambda f: timed(one.infer, f)], rounds, progress)
        else:
            t_cum, t_one = by_exit(feeds, ctl.forced, one.infer, exits, rounds, progress)
    rows_b = cal.bucket_of(lengths[picked], buckets)
    keep = [b for b in range(len(buckets)) if (rows_b == b).any()]
    med = lambda a: np.median(a, axis=0) * 1000  # noqa: E731
    one_ms, cum_ms = med(t_one), med(t_cum)
    return cal.Timing(
        buckets=[buckets[b] for b in keep],
        cum_ms=np.stack([cum_ms[rows_b == b].mean(0) for b in keep]),
        chain_ms=np.array([one_ms[rows_b == b].mean() for b in keep]),
        single_ms=np.array([one_ms[rows_b == b].mean() for b in keep]),
        texts=[int((rows_b == b).sum()) for b in keep],
    )


def measure_deployed(
    model,
    report: cal.CalibrationReport,
    texts: list[str],
    lengths: np.ndarray,
    target: str,
    out: Path,
    n: int = 100,
    rounds: int = 3,
    progress=None,
    options: dict | None = None,
) -> tuple[float, float, int]:
    """(mean ms of the exit artifact of ``report``'s chosen point, mean ms of the single graph it ships, texts):
    the point exported as ``edgekit exits export`` would (its exits, thresholds, length plan, form), compiled for
    ``target`` and called as deployed at batch 1 on texts picked as :func:`measure_target` picks them (each at its
    own length), the two interleaved text by text; a text's time is its median over ``rounds``. ``options``: the
    target's compile options, as calibration timed it."""
    from edgekit.deploy.runtime import Predictor

    art = out / "deployed"
    chosen = make(report.chosen.policy, report.chosen.param)
    extra = {"length_plan": report.length_plan} if report.length_plan else None  # what 'exits export' takes from it
    export_segments(model, chosen, art / "onnx", extra=extra, layers=report.exits, form=report.form)
    compile_exits(art / "onnx", target, art / target, options=options)
    opts = timing_options(target)
    buckets = [b.up_to for b in report.length_buckets or []] or [int(lengths.max())]
    picked = pick(lengths, buckets, n)
    with Predictor(art / target, options=opts) as deployed:
        ctl = deployed.exits
        feeds = [deployed.tokenizer([texts[i]]) for i in picked]
        t_exit, t_one = interleaved(feeds, [lambda f: timed(ctl.infer, f), lambda f: timed(ctl.single.infer, f)], rounds, progress)
    return float(np.median(t_exit, 0).mean() * 1000), float(np.median(t_one, 0).mean() * 1000), len(feeds)

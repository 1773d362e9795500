"""Operating points that hold on unseen data: bootstrap bounds, per-exit thresholds, exit subsets."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.exits.calibrate import Scorer, Timing, choose, expected_targets, fit_temperature
from edgekit.build.exits.operating import (
    Bootstrap,
    check_dev_size,
    check_estimate,
    check_holdout,
    dev_texts_needed,
    frontier,
    report,
    search,
    split_rows,
)
from edgekit.errors import ConfigError, DataError


def _exits(n: int, seed: int = 0, wrong: float = 0.008):
    """Two classes, exits after layers 2, 4, 6. Exit 1 is confident on every row (it always leaves
    early) and wrong on a fraction ``wrong`` of them; exit 2 is confident and right on half the rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    final = np.eye(2)[labels] * 6.0
    flip = np.zeros(n, bool)
    flip[: round(wrong * n)] = True
    first = np.eye(2)[np.where(flip, 1 - labels, labels)] * 9.0
    second = np.eye(2)[labels] * np.where(rng.random(n) < 0.5, 9.0, 0.1)[:, None]
    rep = np.ones((n, 2))
    return [{"output": o, "rep": rep, "score": np.ones(n)} for o in (first, second, final)], labels


def test_bootstrap_lower_bound_is_below_the_mean_and_tightens_with_more_rows():
    rng = np.random.default_rng(1)
    margins = []
    for n in (200, 3200):
        values = (rng.random(n) < 0.9).astype(float)
        boot = Bootstrap(n, confidence=0.9, resamples=1000, seed=0)
        low = boot.lower(values)
        assert low < values.mean() < boot.upper(values)
        margins.append(values.mean() - low)
    assert margins[1] < margins[0] / 2  # 16x the rows: about a quarter of the margin
    b1, b2 = Bootstrap(100, seed=3), Bootstrap(100, seed=3)
    assert np.array_equal(b1.weights, b2.weights)  # seeded


def test_point_estimate_passes_the_budget_but_the_bound_does_not():
    exits, labels = _exits(500)  # exit 1: 0.8 points below on dev, within a 1-point budget
    plain = Scorer(exits, [2, 4, 6], "classifier", labels)
    bounded = Scorer(exits, [2, 4, 6], "classifier", labels, bound=Bootstrap(500, 0.9))
    p, b = plain.point("entropy", 0.5), bounded.point("entropy", 0.5)
    assert p.exit_histogram[0] == 500 and 100 * (1 - p.quality) == pytest.approx(0.8)
    assert 100 * (1 - b.quality_low) > 1.0 and b.quality_low < b.quality
    never = bounded.point("entropy", 0.0)
    assert choose(1.0, [p, plain.point("entropy", 0.0)], max_drop=1.0).param == 0.5
    assert choose(1.0, [b, never], max_drop=1.0).param == 0.0  # the bound moves the choice to a slower, safe point


def test_per_exit_thresholds_never_do_worse_than_the_global_one_on_dev():
    exits, labels = _exits(400, wrong=0.05)
    # exit 1 is wrong on 5 % of rows: with 2 points of budget no global threshold may use it, but a
    # vector that leaves exit 1 off and exit 2 on can
    scorer = Scorer(exits, [2, 4, 6], "classifier", labels)
    points = search(scorer, ["entropy"], max_drop=2.0)
    global_best = choose(scorer.base, [p for p in points if not isinstance(p.param, list)], max_drop=2.0)
    vector = [p for p in points if isinstance(p.param, list)]
    assert len(vector) == 1 and len(vector[0].param) == 2
    v = vector[0]
    assert v.mean_layers < global_best.mean_layers and 100 * (scorer.base - v.quality) <= 2.0
    assert choose(scorer.base, points, max_drop=2.0) is v


def test_an_exit_subset_merges_segments_and_saves_their_boundaries():
    t = Timing(buckets=[16], cum_ms=np.array([[1.0, 2.0, 3.0]]), chain_ms=np.array([2.6]), single_ms=np.array([2.0]), texts=[5])
    assert t.boundary_ms().tolist() == [0.5] and t.boundary_ms(False).tolist() == [pytest.approx(0.3)]
    m = t.merged([1])  # keep the exit after segment 2 only: the boundary after segment 1 goes
    assert m.cum_ms.tolist() == [[1.5, 2.5]] and m.chain_ms.tolist() == [pytest.approx(2.3)]
    exits, labels = _exits(200, wrong=0.05)
    timing = Timing(buckets=[512], cum_ms=np.array([[1.0, 2.0, 3.0]]), chain_ms=np.array([2.6]), single_ms=np.array([2.0]), texts=[5])
    scorer = Scorer(exits, [2, 4, 6], "classifier", labels, lengths=np.full(200, 10), timing=timing)
    sub = scorer.point("entropy", 0.5, [1])
    confident = int((exits[1]["output"].max(1) > 1).sum())
    assert sub.exits == [4, 6] and sub.exit_histogram == [confident, 200 - confident]
    assert sub.expected_latency_ms == pytest.approx((confident * 1.5 + (200 - confident) * 2.5) / 200)
    full = scorer.point("entropy", 0.5)
    assert sub.quality == 1.0 and full.quality < 1.0  # the subset skips the unreliable first exit
    assert len(scorer.subsets(3)) == 2  # {exit 1}, {exit 2} of two exits before the last


def test_report_shows_the_interval_the_subset_and_the_dev_size_needed():
    exits, labels = _exits(2000, wrong=0.004)
    r = report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(2000, 10), max_drop=1.0, data="dev")
    i = r.interval
    assert r.chosen is not None and r.confidence == 0.9
    assert i.quality_low <= i.quality <= i.quality_high and i.drop <= i.drop_high <= 1.0
    # bounded on the held-out rows, searched on the others
    assert 800 < i.dev_texts < 1200 and i.search_texts == 2000 - i.dev_texts
    assert i.dev_texts_needed == dev_texts_needed(i.dev_texts, i.drop_high - i.drop, 1.0)
    assert r.exits is None  # no timing: subsets cannot be faster
    same = report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(2000, 10), max_drop=1.0, holdout=0).interval
    assert same.dev_texts == 2000 and same.search_texts is None
    off = report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(2000, 10), max_drop=1.0, confidence=None)
    assert off.interval is None and off.confidence is None


def test_bad_input_dev_too_small_and_an_impossible_budget():
    exits, labels = _exits(20)
    with pytest.raises(DataError, match=r"dev set too small .* about \d+ texts needed"):
        report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(20, 10), max_drop=1.0)
    with pytest.raises(DataError, match="about 12800 texts needed"):
        check_dev_size(200, 2.0, 1.0, 0.9)  # margin 2 points on 200 texts; under 0.25 points: 8x smaller, 64x the texts
    check_dev_size(200, 0.5, 1.0, 0.9)
    exits, labels = _exits(500)
    with pytest.raises(ConfigError, match=r"best reachable drop \(upper confidence bound\) is 0\.00 points, at \d\.\d\d layers \(\w+="):
        report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(500, 10), max_drop=-1.0)
    with pytest.raises(ConfigError, match="confidence 1.5 out of range"):
        Bootstrap(10, confidence=1.5)


def test_recipe_exits_confidence_is_zero_or_a_one_sided_level():
    from pydantic import ValidationError

    from edgekit.build.recipe import Exits

    assert Exits().confidence == 0.9 and Exits(confidence=0).confidence == 0
    for bad in (0.3, 1.0, -0.1):
        with pytest.raises(ValidationError, match="confidence"):
            Exits(confidence=bad)
    assert Exits().holdout == 0.5 and Exits(holdout=0).holdout == 0
    for bad in (0.9, -0.1):
        with pytest.raises(ValidationError, match="holdout"):
            Exits(holdout=bad)


def test_cluster_bootstrap_is_wider_when_rows_of_a_group_fail_together():
    # 800 rows in 40 groups of 20; errors come by group (4 groups entirely wrong): 90 % right either way
    n, size = 800, 20
    groups = np.repeat([f"src{i}" for i in range(n // size)], size)
    by_group = np.ones(n)
    by_group[: 4 * size] = 0.0
    rows = Bootstrap(n, 0.9, seed=0)
    clustered = Bootstrap(n, 0.9, seed=0, groups=groups)
    assert clustered.groups == 40 and rows.groups is None
    assert np.array_equal(clustered.weights[:, :size], np.repeat(clustered.weights[:, :1], size, axis=1))  # one weight a group
    row_margin = by_group.mean() - rows.lower(by_group)
    group_margin = by_group.mean() - clustered.lower(by_group)
    assert group_margin > 2.5 * row_margin  # about sqrt(20) wider: 40 independent units, not 800
    # errors spread evenly over the groups (two in each): no group differs, so the cluster bound is no wider
    spread = np.ones(n)
    spread[::10] = 0.0
    assert spread.mean() - clustered.lower(spread) <= spread.mean() - rows.lower(spread) + 1e-12
    with pytest.raises(DataError, match="group ids for"):
        Bootstrap(n, 0.9, groups=groups[:-1])


def test_report_names_the_groups_of_its_bound():
    exits, labels = _exits(600)
    groups = [f"g{i % 150}" for i in range(600)]
    r = report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(600, 10), max_drop=5.0, confidence=0.9, groups=groups, holdout=0)
    assert r.interval is not None and r.interval.dev_groups == 150 and r.interval.dev_texts == 600
    held = report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(600, 10), max_drop=5.0, groups=groups).interval
    assert 50 < held.dev_groups < 100 and held.dev_texts == 4 * held.dev_groups  # whole groups of 4 held out


def test_the_accuracy_lost_to_exits_is_at_most_their_disagreement_with_the_final_exit():
    """Why unlabelled deployment texts can carry the budget (``--unsupervised``): per row, an exit that
    decides as the final exit is exactly as right, so the labelled drop of every operating point is at
    most its unlabelled disagreement; on rows where the final exit is wrong an exit can even gain."""
    rng = np.random.default_rng(5)
    n, k = 400, 4
    labels = rng.integers(0, k, n)
    exits = [{"output": rng.normal(size=(n, k)) * s + np.eye(k)[labels] * a} for s, a in ((2.0, 1.0), (1.0, 2.0), (1.0, 3.0))]
    labelled, unlabelled = Scorer(exits, [2, 4, 6], "classifier", labels), Scorer(exits, [2, 4, 6], "classifier", None)
    assert unlabelled.base == 1.0 and labelled.base < 1.0  # the final exit is itself wrong on some rows
    gaps = []
    for value in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95):
        drop = labelled.base - labelled.point("entropy", value).quality
        disagreement = 1.0 - unlabelled.point("entropy", value).quality
        assert drop <= disagreement + 1e-12
        gaps.append(disagreement - drop)
    assert max(gaps) > 0  # strict somewhere: the bound is conservative, not an identity


def test_the_expected_estimate_counts_a_disagreement_by_the_final_exits_probabilities():
    """``--estimate expected``: with the final exit's probabilities as ``labels``, a point's drop lies between 0
    and its disagreement, and it is exactly the labelled drop expected when the labels follow those
    probabilities (the final exit calibrated): averaged over label draws, the two meet."""
    rng = np.random.default_rng(11)
    n, k = 300, 5
    cls = rng.integers(0, k, n)
    exits = [{"output": rng.normal(size=(n, k)) * s + np.eye(k)[cls] * a} for s, a in ((2.0, 1.0), (1.0, 2.0), (1.0, 2.5))]
    probs = expected_targets(exits[-1]["output"])
    expected, agreeing = Scorer(exits, [2, 4, 6], "classifier", probs), Scorer(exits, [2, 4, 6], "classifier", None)
    assert expected.base == pytest.approx(probs.max(-1).mean()) and expected.base < 1.0
    cum = probs.cumsum(-1)
    draws = [(rng.random((n, 1)) > cum).sum(-1).clip(max=k - 1) for _ in range(400)]  # labels ~ the final exit
    for value in (0.3, 0.6, 0.9):
        drop = expected.base - expected.point("entropy", value).quality
        disagreement = 1.0 - agreeing.point("entropy", value).quality
        assert 0.0 <= drop <= disagreement + 1e-12
        labelled = [Scorer(exits, [2, 4, 6], "classifier", y) for y in draws]
        drops = np.array([sc.base - sc.point("entropy", value).quality for sc in labelled])
        assert abs(drops.mean() - drop) < 4 * drops.std() / np.sqrt(len(drops)) + 1e-9
    assert 1.0 - agreeing.point("entropy", 0.9).quality > 0  # the check above is not of a point that never leaves


def test_temperature_scaling_recovers_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6000, 4)) * 3
    for t in (0.5, 2.0):
        cum = expected_targets(logits, t).cumsum(-1)
        labels = (rng.random((len(logits), 1)) > cum).sum(-1).clip(max=3)
        assert fit_temperature(logits, labels) == pytest.approx(t, rel=0.1)
        assert expected_targets(logits, t).sum(-1) == pytest.approx(1.0)


def test_estimate_combinations_are_refused_before_any_model_work():
    check_estimate("expected", True, "dev.jsonl")  # the one complete combination
    with pytest.raises(ConfigError, match="unknown --estimate 'soft'"):
        check_estimate("soft", True, None)
    with pytest.raises(ConfigError, match="it needs --unsupervised"):
        check_estimate("expected", False, None)
    with pytest.raises(ConfigError, match="--temperature-data scales the probabilities"):
        check_estimate("agreement", True, "dev.jsonl")


def _retrieval_exits(n: int, dim: int = 64, moved: int = 4):
    """Embedding exits after layers 3 and 6 on ``n`` query/doc pairs (rows: queries, then docs). The final
    exit ranks every query's doc first; exit 1 keeps every doc but moves ``moved`` queries onto another
    query's doc. Exit 1's learned score is 1 on the queries it keeps right and on the docs, 0.5 on the moved."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:n]
    final = np.concatenate([basis, basis + 0.05 * rng.normal(size=basis.shape)])
    first = final.copy()
    first[:moved] = basis[(np.arange(moved) + 1) % n]  # query i now points at doc i + 1
    score = np.ones(2 * n)
    score[:moved] = 0.5
    return [{"output": first, "score": score}, {"output": final, "score": np.ones(2 * n)}]


def test_retrieval_quality_is_recall_at_1_per_query_with_queries_and_docs_embedded_as_deployed():
    from edgekit.build.exits.calibrate import retrieval_labels, row_quality
    from edgekit.deploy.eval import retrieval

    n = 60
    exits, labels = _retrieval_exits(n), retrieval_labels(n)
    assert labels[:n].tolist() == list(range(n, 2 * n)) and (labels[n:] == -1).all()
    rows = row_quality("embedding", exits[0]["output"], exits[1]["output"], labels)
    assert rows.shape == (n,) and rows[:4].sum() == 0 and rows[4:].all()  # one value per query, not per text
    assert rows.mean() == pytest.approx(retrieval(exits[0]["output"][:n], exits[0]["output"][n:])["recall@1"])
    kw = {"lengths": np.full(2 * n, 10), "policies": ["learned"], "per_exit": False}
    r = report(exits, [3, 6], "embedding", labels, max_drop=10.0, confidence=None, **kw)
    assert r.metric == "recall@1" and r.base_quality == 1.0
    every = next(p for p in r.points if p.param == 0.5)  # every text leaves at layer 3: 4 of 60 queries miss
    assert every.quality == pytest.approx(56 / 60) and every.exit_histogram == [2 * n, 0]
    assert r.chosen.param == 0.5 and r.chosen.mean_layers == 3.0
    strict = report(exits, [3, 6], "embedding", labels, max_drop=1.0, confidence=None, **kw)
    assert strict.chosen.quality == 1.0 and strict.chosen.exit_histogram == [2 * n - 4, 4]  # the moved queries go on
    bound = report(exits, [3, 6], "embedding", labels, max_drop=10.0, confidence=0.9, **kw)
    assert bound.interval.dev_texts == n  # the bound resamples queries, not the 2n texts embedded
    unsup = report(exits, [3, 6], "embedding", None, max_drop=1.0, confidence=None, **kw)
    assert unsup.metric == "cosine to the final exit"


def test_queries_only_rank_against_docs_the_full_model_embedded():
    from edgekit.build.exits.calibrate import IndexedDocs, row_quality

    n = 60
    both = _retrieval_exits(n)
    exits = [{"output": e["output"][:n], "score": e["score"][:n]} for e in both]  # the queries' rows only
    index = IndexedDocs(both[1]["output"][n:])  # the docs, by the final exit
    rows = row_quality("embedding", exits[0]["output"], exits[1]["output"], index)
    assert rows.shape == (n,) and rows[:4].sum() == 0 and rows[4:].all()
    kw = {"lengths": np.full(n, 10), "policies": ["learned"], "per_exit": False, "confidence": None}
    r = report(exits, [3, 6], "embedding", index, max_drop=10.0, **kw)
    assert r.metric.startswith("recall@1") and "docs embedded without exits" in r.metric and r.base_quality == 1.0
    every = next(p for p in r.points if p.param == 0.5)
    assert every.quality == pytest.approx(56 / 60) and every.exit_histogram == [n, 0]  # only queries run the exits


def test_split_rows_holds_out_whole_groups_seeded():
    groups = np.repeat([f"g{i}" for i in range(100)], 5)
    search, held = split_rows(500, 0.5, groups)
    assert len(search) + len(held) == 500 and not set(groups[search]) & set(groups[held])
    assert 150 < len(held) < 350
    again = split_rows(500, 0.5, groups)
    assert np.array_equal(again[1], held)  # seeded: a calibration is reproducible
    rows_only = split_rows(500, 0.5)
    assert not np.array_equal(rows_only[1], held)


def test_the_held_out_check_stops_a_point_whose_bound_was_low_by_chance():
    """Exit 1 is wrong only on held-out rows: searched on the other rows it looks free, and the same-rows
    choice (searched and bounded on every row) takes it at its 0.6-point drop; the held-out check tries it,
    finds its bound over budget and stops there, so a slower point that never used exit 1 is chosen."""
    n = 2000
    exits, labels = _exits(n, wrong=0.0)
    _, held = split_rows(n, 0.5)
    wrong = held[:12]  # 12 of ~1,000 held-out rows: 1.2 points there, 0.6 points on all rows
    first = exits[0]["output"].copy()
    first[wrong] = first[wrong][:, ::-1]
    exits[0] = {**exits[0], "output": first}
    kw = dict(lengths=np.full(n, 10), max_drop=1.0, policies=["entropy"], per_exit=False)
    same = report(exits, [2, 4, 6], "classifier", labels, holdout=0, **kw)
    assert same.chosen.exit_histogram[0] == n  # every row leaves at exit 1
    r = report(exits, [2, 4, 6], "classifier", labels, **kw)
    assert r.chosen.exit_histogram[0] == 0 and r.chosen.mean_layers > same.chosen.mean_layers
    assert r.chosen.quality == 1.0 and r.interval.drop_high <= 1.0
    # the report keeps the sequence: every point before the last held, the last (exit 1 taken) did not
    seq = r.held_out_sequence
    assert seq[-1]["held_out_drop_bound"] > 1.0 and all(t["held_out_drop_bound"] <= 1.0 for t in seq[:-1])
    assert r.chosen.spec in [t["point"] for t in seq[:-1]] and same.held_out_sequence is None


def test_bad_holdout_and_a_dev_set_too_small_to_hold_out():
    with pytest.raises(ConfigError, match="holdout 0.9 out of range"):
        check_holdout(0.9)
    check_holdout(0)
    exits, labels = _exits(50)
    with pytest.raises(DataError, match=r"held-out rows: \d+ .* texts of 50, fewer than 30: about 60 texts needed.*--holdout 0"):
        report(exits, [2, 4, 6], "classifier", labels, lengths=np.full(50, 10), max_drop=5.0)


def test_the_held_out_sequence_keeps_only_points_faster_than_every_safer_one():
    """A point slower than one with a smaller drop bound can never be chosen; tested in the sequence, its chance
    failure would end the sequence before the faster points (frontier)."""
    order = [(0.1, 5.0), (0.2, 6.0), (0.3, 4.0), (0.3, 4.0), (0.4, 4.5), (0.5, 3.0)]  # (bound, speed), by bound
    assert frontier(order, lambda p: p[1]) == [(0.1, 5.0), (0.3, 4.0), (0.5, 3.0)]
    assert frontier([], lambda p: p[1]) == []
    # thinned: a point must be faster than the last one kept by more than the step; the first is always kept
    order = [(0.1, 5.0), (0.2, 4.95), (0.3, 4.85), (0.4, 4.0), (0.5, 3.99)]
    assert frontier(order, lambda p: p[1], step=0.1) == [(0.1, 5.0), (0.3, 4.85), (0.4, 4.0)]
    assert frontier(order, lambda p: p[1], step=10.0) == [(0.1, 5.0)]


def test_the_held_out_sequence_is_ordered_by_layers_and_chooses_the_fastest_that_held():
    """Measured latency is re-timed on a shared CPU each calibration: it picks the fastest point that held, but
    the sequence (its order and its thinning) follows mean layers, so timing noise cannot add or drop a test."""
    from types import SimpleNamespace

    from edgekit.build.exits.calibrate import Point
    from edgekit.build.exits.operating import HeldOut

    def point(name, bound, layers, ms):
        return Point("entropy", name, 1.0, layers, [], ms, ms / 10.0, quality_low=1.0 - bound / 100)

    a, b, c, d, e = (
        point(0.1, 0.0, 5.0, 9.0),
        point(0.2, 0.1, 4.0, 6.0),
        point(0.3, 0.2, 3.9, 5.0),
        point(0.4, 0.3, 3.0, 6.5),
        point(0.5, 0.4, 2.0, 7.0),
    )
    held = HeldOut.__new__(HeldOut)  # the search rows' scores and the held-out bounds stubbed: the order alone
    held.search, held.layers = SimpleNamespace(base=1.0, single_ms=10.0), 6
    held.drop_high = lambda p: 2.0 if p.param == e.param else 0.5
    pick, tried = held.choose([e, c, a, d, b], max_drop=1.0)
    # c is thinned (0.1 layers under b, the step is 2 % of 6 layers); e fails and ends the sequence
    assert [p for p, _ in tried] == [a, b, d, e] and pick is b  # b: the fastest by latency of a, b, d
    slower = [
        point(x.param, 100 * (1 - x.quality_low), x.mean_layers, x.expected_latency_ms * f)
        for x, f in zip([a, b, c, d, e], [1, 1.3, 0.8, 0.7, 1])
    ]
    pick, tried = held.choose(slower, max_drop=1.0)  # other timings: the same sequence, the fastest that held
    assert [p.param for p, _ in tried] == [0.1, 0.2, 0.4, 0.5] and pick.param == 0.4

"""Calibration against the single graph: slower points are never chosen, per-length exit checks."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.exits.calibrate import (
    MIN_SAVING,
    CalibrationReport,
    Interval,
    Point,
    Timing,
    choose,
    recommend,
    save,
    sweep,
    verify_deployed,
)
from edgekit.errors import ConfigError


def _exits():
    # 4 rows, 2 exits: exit 1 is confident and right on rows 0-1, unsure on 2-3
    first = np.array([[9.0, 0], [0, 9.0], [0.1, 0], [0, 0.1]])
    final = np.array([[5.0, 0], [0, 5.0], [0, 5.0], [5.0, 0]])
    return [
        {"output": first, "rep": np.ones((4, 2)), "score": np.array([0.99, 0.99, 0.2, 0.2])},
        {"output": final, "rep": np.ones((4, 2)), "score": np.ones(4)},
    ]


PTS = [
    Point("entropy", 0.0, 0.92, 6, [0, 10], 10.0),
    Point("entropy", 0.3, 0.915, 4, [5, 5], 7.0),
    Point("entropy", 0.6, 0.80, 2, [9, 1], 3.0),
]


def test_points_no_faster_than_the_single_graph_are_never_chosen():
    assert choose(0.92, PTS, max_drop=1.0, single_ms=8.0).param == 0.3
    assert choose(0.92, PTS, max_drop=1.0, single_ms=7.0) is None  # 7.0 ms is not faster than 7.0 ms
    assert choose(0.92, PTS, max_drop=20, single_ms=7.0).param == 0.6


def test_a_saving_within_timing_noise_is_not_a_reason_to_ship_exits():
    """A point expected to save less than MIN_SAVING (3 %) of the single graph's time is not chosen."""
    assert choose(0.92, PTS, max_drop=1.0, single_ms=7.0 / (1 - MIN_SAVING / 3)) is None
    assert choose(0.92, PTS, max_drop=1.0, single_ms=7.0 / (1 - 1.3 * MIN_SAVING)).param == 0.3
    rec, _, msg = recommend(None, PTS, [0.5, 0.6, 0.92], [2, 4, 6], 1.0, 7.0 / (1 - MIN_SAVING / 3), "ort-cpu", base=0.92)
    assert rec == "none" and f"{MIN_SAVING:.0%} faster than the single graph" in msg


def test_a_latency_target_the_single_graph_meets_keeps_the_single_graph():
    assert choose(0.92, PTS, max_latency_ms=8.0, single_ms=6.0) is None  # as fast and more accurate
    assert choose(0.92, PTS, max_latency_ms=8.0, single_ms=9.0).param == 0.3
    with pytest.raises(ConfigError, match="the single graph 9.00 ms"):
        choose(0.92, PTS, max_latency_ms=2.0, single_ms=9.0)


def test_recommendation_names_the_depth_cut_or_no_exits():
    rec, layer, msg = recommend(None, PTS, [0.90, 0.919, 0.92], [2, 4, 6], 1.0, 2.5, "ort-cpu")
    assert (rec, layer) == ("prune", 4) and "faster than the single graph on ort-cpu (2.50 ms" in msg and "--layer 4" in msg
    rec, layer, msg = recommend(None, PTS, [0.5, 0.6, 0.92], [2, 4, 6], 1.0, 2.5, "ort-cpu")
    assert (rec, layer) == ("none", None) and "without exits" in msg


def test_exit_checks_are_turned_off_where_the_segments_without_checks_are_cheaper():
    labels = np.array([0, 1, 1, 0])
    lengths = np.array([100, 100, 10, 10])  # rows 0-1 long (confident: they leave at exit 1), rows 2-3 short (unsure)
    # short bucket: nobody leaves, so checking only costs (2.0 ms to the end vs 1.5 ms without checks);
    # long bucket: leaving at exit 1 (4 ms) beats 9 ms without checks.
    timing = Timing(
        buckets=[16, 128],
        cum_ms=np.array([[1.9, 2.0], [4.0, 10.0]]),
        chain_ms=np.array([1.5, 9.0]),
        single_ms=np.array([1.4, 8.5]),
        texts=[3, 3],
    )
    base, points = sweep(_exits(), [3, 6], "classifier", labels, ["entropy"], lengths=lengths, timing=timing)
    p = next(p for p in points if p.param == 0.1)
    assert p.check == [False, True]
    assert p.exit_histogram == [2, 2]
    assert p.expected_latency_ms == pytest.approx((4.0 + 4.0 + 1.5 + 1.5) / 4)
    assert p.latency_ratio == pytest.approx(p.expected_latency_ms / ((1.4 + 1.4 + 8.5 + 8.5) / 4))
    assert p.quality == base == 1.0


def test_report_is_typed_and_keeps_the_former_keys(tmp_path):
    r = CalibrationReport(
        base_quality=0.92,
        layers=[3, 6],
        per_exit_quality=[0.8, 0.92],
        points=PTS,
        chosen=PTS[1],
        recommendation="exits",
        message="m",
        single_graph_latency_ms=8.0,
        segment_latency_ms=[4.0, 4.5],
        target="ort-cpu",
    )
    assert r["base"] == 0.92 and r["chosen"]["param"] == 0.3 and r["layers"] == [3, 6]
    files = save(r, tmp_path)
    doc = CalibrationReport.model_validate_json((tmp_path / "calibration.json").read_text())
    assert doc.chosen == PTS[1] and doc.files == [str(f) for f in files]
    with pytest.raises(ValueError):
        CalibrationReport(**{**r.model_dump(), "recommendation": "maybe"})


def _report(per_exit: list[float]) -> CalibrationReport:
    return CalibrationReport(
        base_quality=0.92,
        layers=[2, 4, 6],
        per_exit_quality=per_exit,
        points=PTS,
        chosen=PTS[1],
        recommendation="exits",
        message="early exit entropy=0.3",
        single_graph_latency_ms=8.0,
        target="openvino-cpu",
        exits=[4, 6],
        length_plan={"buckets": [64, 128], "check": [True, True]},
    )


def test_a_point_that_saves_as_deployed_is_kept_with_its_measurement():
    r = verify_deployed(_report([0.5, 0.6, 0.92]), 4.0, 8.0, 40)
    assert r.chosen == PTS[1] and r.recommendation == "exits" and r.exits == [4, 6]
    assert r.deployed_check == {"exit_ms": 4.0, "single_ms": 8.0, "ratio": 0.5, "texts": 40, "kept": True}


def test_a_point_no_faster_as_deployed_is_dropped_for_the_depth_cut_or_no_exits():
    """Expected latency is a model of the artifact; the artifact as deployed decides (on OpenVINO with the 1-bit
    kernel a point expected at 0.96x ran at 1.07-1.11x the single graph)."""
    r = verify_deployed(_report([0.5, 0.6, 0.92]), 8.56, 8.0, 40)
    assert r.chosen is None and r.recommendation == "none" and r.exits is None and r.length_plan is None
    assert "ran at 1.07x the single graph as deployed on openvino-cpu" in r.message and "without exits" in r.message
    assert r.deployed_check["kept"] is False and r.deployed_check["ratio"] == pytest.approx(1.07)
    cut = verify_deployed(_report([0.5, 0.919, 0.92]), 8.0 * (1 - MIN_SAVING / 2), 8.0, 40)  # saves under MIN_SAVING
    assert cut.chosen is None and (cut.recommendation, cut.prune_layer) == ("prune", 4) and "--layer 4" in cut.message


def test_a_held_out_bound_above_the_point_on_all_dev_rows_still_plots(tmp_path):
    """The chosen point is shown on every dev row, its bound comes from the held-out rows: the bound can lie above
    it (a held-out half where the point lost nothing). The plot draws no bar then, instead of failing."""
    chosen = Point("entropy", 0.3, 0.915, 4, [5, 5], 7.0, quality_low=0.93)
    held = Interval(
        confidence=0.9, resamples=1000, quality=0.92, quality_low=0.93, quality_high=0.95, drop=-0.5, drop_high=-0.1,
        dev_texts=200, dev_texts_needed=30, search_texts=200,
    )  # fmt: skip
    r = _report([0.5, 0.6, 0.92]).model_copy(update={"chosen": chosen, "points": [*PTS, chosen], "interval": held})
    files = save(r, tmp_path)
    assert (tmp_path / "calibration.png").stat().st_size > 5000 and len(files) == 2

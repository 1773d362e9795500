"""Calibration arithmetic: quality per point, expected latency, choosing under a budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.exits.calibrate import Point, choose, sweep
from edgekit.errors import ConfigError


def _exits():
    # 4 rows, 2 exits: exit 1 is confident and right on rows 0-1, unsure on 2-3
    first = np.array([[9.0, 0], [0, 9.0], [0.1, 0], [0, 0.1]])
    final = np.array([[5.0, 0], [0, 5.0], [0, 5.0], [5.0, 0]])
    return [
        {"output": first, "rep": np.ones((4, 2)), "score": np.array([0.99, 0.99, 0.2, 0.2])},
        {"output": final, "rep": np.ones((4, 2)), "score": np.ones(4)},
    ]


def test_expected_latency_is_exit_probability_times_cumulative_segments():
    labels = np.array([0, 1, 1, 0])
    base, points = sweep(_exits(), [3, 6], "classifier", labels, ["entropy"], segment_ms=[2.0, 3.0])
    assert base == 1.0
    p = next(p for p in points if p.param == 0.1)
    assert p.exit_histogram == [2, 2]
    assert p.expected_latency_ms == pytest.approx(0.5 * 2.0 + 0.5 * 5.0)
    assert p.mean_layers == pytest.approx(4.5) and p.quality == 1.0


def test_choose_fastest_within_budget_and_latency_target():
    pts = [
        Point("entropy", 0.0, 0.92, 6, [0, 10], 10.0),
        Point("entropy", 0.3, 0.915, 4, [5, 5], 7.0),
        Point("entropy", 0.6, 0.80, 2, [9, 1], 3.0),
    ]
    assert choose(0.92, pts, max_drop=1.0).param == 0.3
    assert choose(0.92, pts, max_drop=20).param == 0.6
    assert choose(0.92, pts, max_latency_ms=8.0).param == 0.3
    with pytest.raises(ConfigError, match="no operating point meets 1.0 ms"):
        choose(0.92, pts, max_latency_ms=1.0)

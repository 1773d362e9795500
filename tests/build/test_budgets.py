"""Budgets of a build: each artifact's figures against the recipe's limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgekit.build.budgets import check_budgets
from edgekit.build.recipe import Budgets
from edgekit.deploy import devices

TARGET = "ort-cpu"


def _devices_for(target: str, *, here: bool) -> list[str]:
    return [name for name, p in devices.all_profiles().items() if target in p.targets and devices.machine_matches(p)[0] == here]


def _device(*, here: bool) -> str:
    names = _devices_for(TARGET, here=here)
    if not names:
        pytest.skip(f"no device profile running {TARGET} {'matches' if here else 'differs from'} this machine")
    return names[0]


def _entry(*, drop: float | None = None, p50: float | None = None, model_bytes: int = 1_000_000, pending: str | None = None) -> dict:
    entry = {"model_bytes": model_bytes, "path": "dist/x/ort-cpu"}
    if drop is not None:
        entry["accuracy"] = {"drop_points": drop, "metric": "accuracy", "value": 0.8, "baseline": 0.81, "data": "dev.jsonl"}
    if p50 is not None:
        entry["latency"] = {"p50_ms": p50, "seq_len": 128, "host": "this-host"}
    if pending is not None:
        entry["pending"] = pending
    return entry


def _one(results: list[dict], budget: str) -> dict:
    found = [r for r in results if r["budget"] == budget]
    assert len(found) == 1, results
    return found[0]


def test_no_budgets_no_results():
    assert check_budgets(Budgets(), TARGET, _entry(drop=5.0, p50=1e6), None) == []


@pytest.mark.parametrize(("drop", "status"), [(0.99, "passed"), (1.0, "passed"), (1.01, "failed"), (-0.5, "passed")])
def test_accuracy_drop_at_the_limit_passes(drop, status):
    r = _one(check_budgets(Budgets(max_accuracy_drop=1.0), TARGET, _entry(drop=drop), None), "max_accuracy_drop")
    assert r["status"] == status and r["value"] == drop and r["limit"] == 1.0 and r["unit"] == "points"
    assert r["reason"] is None and r["target"] == TARGET
    assert r["detail"] == "accuracy 0.8000 vs FP32 0.8100 on dev.jsonl"


def test_accuracy_not_evaluated_is_unchecked_with_the_reason():
    r = _one(check_budgets(Budgets(max_accuracy_drop=1.0), TARGET, _entry(), "it runs only on a Jetson"), "max_accuracy_drop")
    assert r["status"] == "unchecked" and r["value"] is None
    assert "not evaluated: it runs only on a Jetson" in r["reason"] and "edgekit eval" in r["reason"]
    r = _one(check_budgets(Budgets(max_accuracy_drop=1.0), TARGET, _entry(), None), "max_accuracy_drop")
    assert r["status"] == "unchecked" and "no eval" in r["reason"]


@pytest.mark.parametrize(("model_bytes", "status"), [(2_000_000, "passed"), (1_999_000, "passed"), (2_001_000, "failed")])
def test_size_at_the_limit_passes(model_bytes, status):
    r = _one(check_budgets(Budgets(max_size_mb=2.0), TARGET, _entry(model_bytes=model_bytes), None), "max_size_mb")
    assert r["status"] == status and r["value"] == model_bytes / 1e6 and r["unit"] == "MB"
    assert r["detail"] == "model files of dist/x/ort-cpu"


def test_size_of_a_deliverable_finished_on_the_device_is_unchecked():
    r = _one(check_budgets(Budgets(max_size_mb=2.0), TARGET, _entry(pending="build_engine.sh"), None), "max_size_mb")
    assert r["status"] == "unchecked" and r["value"] is None and "finished on the device (build_engine.sh)" in r["reason"]


@pytest.mark.parametrize(("p50", "status"), [(4.0, "passed"), (5.0, "passed"), (5.001, "failed")])
def test_latency_on_this_machines_device_is_checked(p50, status):
    here = _device(here=True)
    r = _one(check_budgets(Budgets(max_p50_ms={here: 5.0}), TARGET, _entry(p50=p50), None), f"max_p50_ms[{here}]")
    assert r["status"] == status and r["value"] == p50 and r["unit"] == "ms" and r["reason"] is None
    assert r["detail"] == "batch 1, 128 tokens, model only, on this-host"


def test_latency_not_profiled_here_is_unchecked():
    here = _device(here=True)
    r = _one(check_budgets(Budgets(max_p50_ms={here: 5.0}), TARGET, _entry(), "profile: false"), f"max_p50_ms[{here}]")
    assert r["status"] == "unchecked" and r["reason"] == "not profiled: profile: false"
    r = _one(check_budgets(Budgets(max_p50_ms={here: 5.0}), TARGET, _entry(), None), f"max_p50_ms[{here}]")
    assert r["reason"] == "not profiled: profiling is off"


def test_latency_budget_of_another_device_is_never_checked_here():
    elsewhere = _device(here=False)
    # a latency measured on this machine says nothing about that device, however good it is
    r = _one(check_budgets(Budgets(max_p50_ms={elsewhere: 5.0}), TARGET, _entry(p50=0.1), None), f"max_p50_ms[{elsewhere}]")
    assert r["status"] == "unchecked" and r["value"] is None
    assert r["reason"].startswith(f"this machine is not a {elsewhere} (") and r["reason"].endswith("profile it there")


def test_latency_budget_of_a_device_without_the_target_is_left_out():
    others = [n for n, p in devices.all_profiles().items() if TARGET not in p.targets]
    assert others, "some shipped device profile does not run ort-cpu"
    assert check_budgets(Budgets(max_p50_ms={others[0]: 5.0}), TARGET, _entry(p50=100.0), None) == []


def test_every_budget_is_reported_for_one_artifact():
    here = _device(here=True)
    b = Budgets(max_accuracy_drop=0.5, max_p50_ms={here: 2.0}, max_size_mb=1.0)
    results = check_budgets(b, TARGET, _entry(drop=0.7, p50=1.0, model_bytes=900_000), None)
    assert {r["budget"]: r["status"] for r in results} == {
        "max_accuracy_drop": "failed",
        f"max_p50_ms[{here}]": "passed",
        "max_size_mb": "passed",
    }


def test_budgets_refuse_unknown_devices_and_non_positive_limits():
    with pytest.raises(ValidationError, match="unknown device 'no-such-board'"):
        Budgets(max_p50_ms={"no-such-board": 5.0})
    with pytest.raises(ValidationError, match="must be > 0 ms"):
        Budgets(max_p50_ms={"x86-64-cpu": 0.0})
    with pytest.raises(ValidationError):
        Budgets(max_size_mb=0)

"""Exit policies and their simulation, on controlled arrays."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.deploy.exits.policies import EXIT_POLICIES, State, make, normalized_entropy, parse, simulate, top_margin
from edgekit.errors import ConfigError


def test_normalized_entropy_bounds():
    assert normalized_entropy(np.array([[0.0, 0.0, 0.0]]))[0] == pytest.approx(1.0)
    assert normalized_entropy(np.array([[100.0, 0.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-12)


def test_margin_reads_only_the_top_two_classes():
    # two rows with the same top-two gap; the second spreads the rest over many classes, which raises its entropy
    flat_tail = np.log(np.array([[0.6, 0.2, 0.2, 1e-9, 1e-9, 1e-9], [0.6, 0.2, 0.05, 0.05, 0.05, 0.05]]))
    assert top_margin(flat_tail) == pytest.approx([0.4, 0.4])
    assert normalized_entropy(flat_tail)[1] > normalized_entropy(flat_tail)[0] + 0.1
    leave, _ = make("margin", 0.39).decide({"output": flat_tail}, State())
    assert leave.tolist() == [True, True]
    leave, _ = make("margin", 0.41).decide({"output": flat_tail}, State())
    assert leave.tolist() == [False, False]
    assert top_margin(np.array([[1.0, 1.0, 0.0]]))[0] == pytest.approx(0.0)  # a tie: never confident


def test_patience_counts_consecutive_agreement():
    p = make("patience", 2)
    state = State()
    preds = [[0, 1], [0, 0], [0, 0]]  # row 0 agrees at exits 2 and 3; row 1 changes at exit 2
    leaves = []
    for pred in preds:
        logits = np.eye(2)[pred] * 5
        leave, state = p.decide({"output": logits, "rep": np.zeros((2, 2)), "score": np.zeros(2)}, state)
        leaves.append(leave.tolist())
    assert leaves == [[False, False], [False, False], [True, False]]


def test_similarity_and_learned():
    s = make("similarity", 0.9)
    rep1 = np.array([[1.0, 0.0], [1.0, 0.0]])
    rep2 = np.array([[1.0, 0.0], [0.0, 1.0]])
    leave, st = s.decide({"output": rep1, "rep": rep1, "score": np.zeros(2)}, State())
    assert not leave.any()  # nothing to compare with at the first exit
    leave, _ = s.decide({"output": rep2, "rep": rep2, "score": np.zeros(2)}, st)
    assert leave.tolist() == [True, False]
    leave, _ = make("learned", 0.7).decide({"output": rep1, "rep": rep1, "score": np.array([0.9, 0.5])}, State())
    assert leave.tolist() == [True, False]


def test_simulate_takes_rows_out_and_the_last_exit_takes_the_rest():
    confident = np.array([[9.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]])
    exits = [
        {"output": confident, "rep": np.ones((3, 2)), "score": np.zeros(3)},
        {"output": np.array([[0, 9.0, 0], [0, 9.0, 0], [0.1, 0, 0]]), "rep": np.ones((3, 2)), "score": np.zeros(3)},
        {"output": np.array([[0, 0, 1.0]] * 3), "rep": np.ones((3, 2)), "score": np.zeros(3)},
    ]
    exit_at, out = simulate(make("entropy", 0.1), exits)
    assert exit_at.tolist() == [0, 1, 2]
    assert out[0].argmax() == 0 and out[1].argmax() == 1 and out[2].argmax() == 2


@pytest.mark.parametrize("spec", ["entropy=1.5", "margin=1.2", "patience=0", "learned=-0.1", "similarity=2"])
def test_parameter_out_of_range(spec):
    with pytest.raises(ConfigError, match="out of range"):
        parse(spec)


def test_unknown_policy_and_bad_spec():
    with pytest.raises(ConfigError, match="known policies: " + ", ".join(EXIT_POLICIES)):
        parse("coinflip=0.5")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse("entropy")


def test_classifier_only_policies_refuse_embedding_models():
    with pytest.raises(ConfigError, match="needs a classifier"):
        make("entropy", 0.3, "embedding")
    assert make("similarity", 0.99, "embedding").param == 0.99


def test_per_exit_thresholds_parse_round_trip_and_apply_exit_by_exit():
    p = parse("entropy=0.05,0.9")
    assert p.per_exit and p.param == [0.05, 0.9] and p.spec == "entropy=0.05,0.9" and parse(p.spec).param == p.param
    unsure = np.array([[0.3, 0.0], [0.2, 0.0]])  # normalized entropy ~0.98 and ~0.99: leaves only under a loose threshold
    exits = [{"output": unsure, "rep": np.ones((2, 2)), "score": np.zeros(2)}] * 2 + [
        {"output": np.array([[0.0, 5.0]] * 2), "rep": np.ones((2, 2)), "score": np.zeros(2)}
    ]
    assert simulate(parse("entropy=0.05,0.995"), exits)[0].tolist() == [1, 1]  # strict at exit 1, loose at exit 2
    assert simulate(parse("entropy=0.995,0.05"), exits)[0].tolist() == [0, 0]
    state = State()
    for k in range(2):  # the exit index travels in the state, also through take()
        _, state = p.decide(exits[k], state)
        state = state.take(np.array([True, True]))
        assert state.k == k + 1


def test_thresholds_of_the_wrong_length_name_both_counts():
    exits = [{"output": np.zeros((1, 2)), "rep": np.ones((1, 2)), "score": np.zeros(1)}] * 3
    with pytest.raises(ConfigError, match=r"^policy entropy: 3 thresholds given, 2 expected \(one per exit before the last of 3\)"):
        simulate(parse("entropy=0.1,0.2,0.3"), exits)
    with pytest.raises(ConfigError, match="2 thresholds given, 5 expected"):
        make("patience", [1, 2]).check(6)
    with pytest.raises(ConfigError, match="parameter 13.0 out of range"):
        parse("patience=1,13")

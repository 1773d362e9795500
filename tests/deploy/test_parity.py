"""Parity of a runtime's outputs with PyTorch's: figures, pass/fail, errors, tolerances, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgekit.deploy import parity
from edgekit.deploy.parity import TOLERANCES, Tolerance, compare, enforce, run_chunked
from edgekit.errors import ParityError

FP32 = TOLERANCES["fp32"]


def _logits(rows: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 3)).astype(np.float32)


def _embeddings(rows: int = 5, width: int = 16, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _classify(ref, act, tol=FP32):
    return compare(ref, act, task="classifier", output="logits", runtime="rt", tolerance=tol)


def _embed(ref, act, tol=FP32):
    return compare(ref, act, task="embedding", output="embeddings", runtime="rt", tolerance=tol)


# ----------------------------------------------------------------------------- classifier


def test_identical_logits_pass_with_exact_figures():
    ref = _logits()
    r = _classify(ref, ref.copy())
    assert r.passed and r.max_abs_diff == 0.0 and r.argmax_agreement == 1.0
    assert r.min_cosine is None and r.texts == 6 and r.output == "logits" and r.runtime == "rt"
    assert r.min_required == FP32.min_argmax_agreement and r.atol == FP32.atol


def test_shift_beyond_atol_fails_though_every_argmax_agrees():
    ref = _logits()
    r = _classify(ref, ref + 0.01)  # a constant shift keeps every argmax
    assert r.argmax_agreement == 1.0
    assert r.max_abs_diff == pytest.approx(0.01, rel=1e-4)
    assert not r.passed


def test_argmax_flip_within_atol_fails():
    # a near-tie: the values move by 4e-4 (inside atol 1e-3) but one row's argmax changes
    ref = np.array([[1.0, 1.0004, 0.0], [2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [0.5, 0.1, 2.0]], dtype=np.float64)
    act = ref.copy()
    act[0] = [1.0004, 1.0, 0.0]
    r = _classify(ref, act)
    assert r.max_abs_diff <= FP32.atol
    assert r.argmax_agreement == pytest.approx(0.75)
    assert not r.passed
    # a tolerance that accepts 3 rows of 4 agreeing passes the same figures
    assert _classify(ref, act, Tolerance(min_argmax_agreement=0.75)).passed


def test_rows_over_atol_pass_up_to_the_share_allowed_and_the_error_counts_them():
    """A quantization-boundary flip moves one text far; a wrong graph moves every text."""
    ref = _logits(rows=32)
    one = ref.copy()
    one[7, 0] += 0.3  # one text off, its argmax kept
    tol = Tolerance(atol=0.25, min_argmax_agreement=0.96, max_rows_over_atol=0.04)
    assert _classify(ref, one).passed is False  # the default allows no text over atol
    r = _classify(ref, one, tol)
    assert r.passed and r.rows_over_atol == 1 and r.max_abs_diff == pytest.approx(0.3, rel=1e-4)
    two = one.copy()
    two[20, 2] -= 0.3
    r = _classify(ref, two, tol)
    assert not r.passed and r.rows_over_atol == 2
    with pytest.raises(ParityError, match=r"atol 0.25; over it on 2 of 32 texts"):
        enforce(r)
    assert not _classify(ref, ref + 0.3, tol).passed  # every text moved: a lowering error
    assert _classify(ref, ref, FP32).rows_over_atol is None  # not reported where none may be over
    nan = one.copy()
    nan[3, 1] = np.nan  # a NaN row counts as over, and NaN fails anyway
    assert not _classify(ref, nan, tol).passed


def test_int8_lets_as_many_texts_drift_past_atol_as_may_change_their_argmax():
    ref = _logits(rows=32)
    act = ref.copy()
    act[28, ref[28].argmax()] -= 5.0  # one text far off, its argmax changed: one binary code flipped early in the network
    int8 = TOLERANCES["int8"]
    r = _classify(ref, act, int8)
    assert r.passed and r.rows_over_atol == 1 and r.argmax_agreement == pytest.approx(31 / 32)
    assert not _classify(ref, ref + 0.6, int8).passed  # every text off: a wrong graph


def test_nan_in_runtime_output_fails_and_enforce_says_nan():
    ref = _logits()
    act = ref.copy()
    act[2, 1] = np.nan
    r = _classify(ref, act)
    assert not r.passed and not np.isfinite(r.max_abs_diff)
    with pytest.raises(ParityError, match=r"rt output 'logits' has NaN/Inf values"):
        enforce(r)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # inf / inf in the cosine
def test_inf_in_runtime_output_fails():
    ref = _embeddings()
    act = ref.copy()
    act[0, 0] = np.inf
    assert not _embed(ref, act, TOLERANCES["int8"]).passed


def test_nan_in_reference_is_an_error_about_the_model():
    ref = _logits()
    ref[0, 0] = np.nan
    with pytest.raises(ParityError, match="the PyTorch model itself gives NaN/Inf on real text \\(1 values\\)"):
        _classify(ref, _logits())


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ParityError, match=r"output 'logits' has shape \(6, 2\), PyTorch gave \(6, 3\)"):
        _classify(_logits(), _logits()[:, :2])


# ----------------------------------------------------------------------------- embedding


def test_identical_embeddings_pass():
    ref = _embeddings()
    r = _embed(ref, ref.copy())
    assert r.passed and r.min_cosine == pytest.approx(1.0) and r.argmax_agreement is None
    assert r.min_required == FP32.min_cosine


def test_min_cosine_is_the_worst_row():
    ref = _embeddings().astype(np.float64)
    act = ref.copy()
    act[3] = ref[3] + 0.2 * _embeddings(seed=9)[0]  # one row turned away
    want = float((ref[3] @ act[3]) / (np.linalg.norm(ref[3]) * np.linalg.norm(act[3])))
    r = _embed(ref, act, Tolerance(atol=1.0, min_cosine=0.5))
    assert r.min_cosine == pytest.approx(want, abs=1e-9) and want < 0.99
    assert r.passed  # within the loose tolerance
    assert not _embed(ref, act, Tolerance(atol=1.0, min_cosine=want + 1e-3)).passed


def test_small_vectors_turned_within_atol_fail_on_cosine():
    # vectors of norm 0.01: a 1e-3 change stays inside atol but turns them by ~0.1 rad
    ref = 0.01 * _embeddings()
    act = ref.copy()
    act[:, 0] += 9e-4
    r = _embed(ref, act)
    assert r.max_abs_diff <= FP32.atol
    assert r.min_cosine < FP32.min_cosine
    assert not r.passed


def test_scaled_embeddings_fail_on_atol_with_perfect_cosine():
    ref = _embeddings()
    r = _embed(ref, ref * 1.5)
    assert r.min_cosine == pytest.approx(1.0) and not r.passed


# ----------------------------------------------------------------------------- enforce, tolerances


def test_enforce_names_output_and_figures():
    ref = _logits()
    with pytest.raises(ParityError) as info:
        enforce(_classify(ref, ref + 0.02))
    msg = info.value.message
    assert "rt output 'logits' differs from PyTorch" in msg
    assert "max abs diff 0.02" in msg and "(atol 0.001)" in msg and "argmax agreement 1.0000" in msg
    assert info.value.hint and "--atol" in info.value.hint

    emb = 0.01 * _embeddings()
    act = emb.copy()
    act[:, 0] += 9e-4
    with pytest.raises(ParityError, match=r"output 'embeddings' differs.*min cosine 0\.\d+ \(need >= 0\.9999\)"):
        enforce(_embed(emb, act))


def test_enforce_hint_names_the_flag_of_the_failed_criterion():
    ref = _logits()
    act = ref.copy()
    act[0] = np.roll(ref[0], 1)  # one row's argmax moves, every value within atol
    with pytest.raises(ParityError) as info:
        enforce(_classify(ref, act, Tolerance(atol=1e3)))
    assert "--min-agreement" in info.value.hint and "--atol" not in info.value.hint
    emb = 0.01 * _embeddings()
    act = emb.copy()
    act[:, 0] += 9e-4
    with pytest.raises(ParityError) as info:
        enforce(_embed(emb, act))
    assert "--min-cosine" in info.value.hint and "--atol" not in info.value.hint


def test_enforce_returns_a_passing_report_unchanged():
    ref = _logits()
    r = _classify(ref, ref + 1e-5)
    assert enforce(r) is r


def test_tolerances_loosen_with_lower_precision():
    order = [TOLERANCES[p] for p in ("fp32", "fp16", "bf16")]
    assert [t.atol for t in order] == sorted(t.atol for t in order) and order[0].atol < order[1].atol
    assert [t.min_cosine for t in order] == sorted((t.min_cosine for t in order), reverse=True)
    assert TOLERANCES["int8"].atol > TOLERANCES["fp16"].atol and TOLERANCES["int8"].min_cosine < TOLERANCES["fp16"].min_cosine
    ref = _logits()
    shifted = ref + 0.05  # what an fp16 runtime may give
    assert not _classify(ref, shifted, TOLERANCES["fp32"]).passed
    assert _classify(ref, shifted, TOLERANCES["fp16"]).passed
    assert not _classify(ref, ref + 0.3, TOLERANCES["fp16"]).passed
    assert _classify(ref, ref + 0.3, TOLERANCES["int8"]).passed


def test_tolerance_is_frozen_and_strict():
    with pytest.raises(ValidationError):
        Tolerance(atl=1e-3)
    with pytest.raises(ValidationError):
        Tolerance(atol=0)
    with pytest.raises(ValidationError):
        FP32.atol = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- references and chunking


def test_reference_round_trip(tmp_path):
    feed = {"input_ids": np.arange(12, dtype=np.int64).reshape(3, 4), "attention_mask": np.ones((3, 4), dtype=np.int64)}
    out = _logits(3)
    parity.save_reference(tmp_path / parity.REFERENCE, feed, out)
    got_feed, got_out = parity.load_reference(tmp_path / parity.REFERENCE)
    assert set(got_feed) == set(feed)
    for k in feed:
        np.testing.assert_array_equal(got_feed[k], feed[k])
    np.testing.assert_array_equal(got_out, out)


def test_run_chunked_keeps_rows_in_order():
    feed = {"a": np.arange(7)[:, None] * np.ones((1, 2)), "b": np.zeros((7, 2))}
    calls = []

    def infer(f):
        calls.append(len(f["a"]))
        return f["a"] * 10 + f["b"]

    out = run_chunked(infer, feed, 3)
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(out, feed["a"] * 10)


def test_run_chunked_on_onnxruntime_equals_one_shot_and_matches_pytorch(exported):
    import onnxruntime as ort

    from edgekit.deploy.artifact import read_manifest

    src = exported("bert-classifier")
    manifest = read_manifest(src)
    feed, reference = parity.load_reference(src / parity.REFERENCE)
    name = manifest.outputs[0].name
    sess = ort.InferenceSession(str(src / manifest.model_file), providers=["CPUExecutionProvider"])

    def infer(f):
        return sess.run([name], f)[0]

    whole = infer(feed)
    rows = whole.shape[0]
    assert rows >= 4
    for batch in (1, 3, rows):
        np.testing.assert_allclose(run_chunked(infer, feed, batch), whole, atol=1e-5)
    report = enforce(compare(reference, run_chunked(infer, feed, 3), task="classifier", output=name, runtime="ort", tolerance=FP32))
    assert report.passed and report.texts == rows and report.max_abs_diff < 1e-4

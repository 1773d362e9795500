"""The deployed early-exit controller: per-row exits over real ONNX Runtime segment sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy import artifact, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.exits.controller import EXIT_LAYER, ExitController, segment_manifest
from edgekit.deploy.runtime import target_for


def _threshold(scores: np.ndarray) -> float:
    """A threshold in the widest gap of the middle half of ``scores`` (no row sits near it)."""
    s = np.sort(scores)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    i = lo + int(np.argmax(np.diff(s)[lo:hi]))
    return float((s[i] + s[i + 1]) / 2)


@pytest.fixture(scope="module")
def segments(checkpoints, texts, tmp_path_factory) -> Path:
    """Two segments (layers 1 and 2) of the tiny BERT embedding model under a learned-score policy."""
    from edgekit.build.exits.model import MultiExitModel, load_exits
    from edgekit.build.exits.segments import export_segments, torch_exits
    from edgekit.build.exits.train import TrainConfig, train_heads
    from edgekit.build.export import ExportOptions, parity_feed
    from edgekit.build.load import load
    from edgekit.deploy.exits.policies import make

    heads = tmp_path_factory.mktemp("controller-heads")
    model = MultiExitModel(load(checkpoints["bert-embedding"]))
    train_heads(model, texts * 2, None, heads, TrainConfig(epochs=1, batch=8), resume=False)
    model.save(heads)
    model = load_exits(heads)
    feed = parity_feed(model.encoder, ExportOptions(), model.encoder.info.max_length)
    out = tmp_path_factory.mktemp("controller") / "onnx"
    export_segments(model, make("learned", _threshold(torch_exits(model, feed)[0]["score"]), "embedding"), out)
    return out


@pytest.fixture(scope="module")
def manifest(segments) -> Manifest:
    return artifact.read_manifest(segments)


@pytest.fixture(scope="module")
def feed(segments) -> dict[str, np.ndarray]:
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    return feed


def _with_param(manifest: Manifest, param: float) -> Manifest:
    return manifest.model_copy(update={"exits": manifest.exits.model_copy(update={"param": param})})


def _controller(segments: Path, manifest: Manifest) -> ExitController:
    return ExitController(target_for(manifest), segments, manifest)


def _every_segment(ctl: ExitController, feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every row through every segment (no exits), as the runtime computes them."""
    first = ctl.run_segment(0, feed)
    return [first, ctl.run_segment(1, {"hidden_in": first["hidden"], "attention_mask": feed["attention_mask"]})]


def test_per_row_exits_equal_the_policy_applied_to_the_segment_outputs(segments, manifest, feed):
    threshold = manifest.exits.param
    with _controller(segments, manifest) as ctl:
        res = ctl.infer(feed)
        outs = _every_segment(ctl, feed)
    # the learned policy, written out: a row leaves after layer 1 when its exit score reaches the threshold
    leaves = outs[0]["score"] >= threshold
    assert 0 < leaves.sum() < len(leaves)
    np.testing.assert_array_equal(res[EXIT_LAYER], np.where(leaves, 1, 2))
    want = np.where(leaves[:, None], outs[0]["output"], outs[1]["output"])
    np.testing.assert_allclose(res[manifest.outputs[0].name], want, atol=1e-5)
    assert set(res) == {"embeddings", EXIT_LAYER}


def test_rows_exit_independently_within_a_batch(segments, manifest, feed):
    name = manifest.outputs[0].name
    with _controller(segments, manifest) as ctl:
        whole = ctl.infer(feed)
        rows = len(whole[EXIT_LAYER])
        before = ctl.histogram.copy()
        alone = [ctl.infer({k: v[i : i + 1] for k, v in feed.items()}) for i in range(rows)]  # batch 1 takes its own path
        assert (ctl.histogram - before).tolist() == [int((whole[EXIT_LAYER] == 1).sum()), int((whole[EXIT_LAYER] == 2).sum())]
        order = np.random.default_rng(0).permutation(rows)
        shuffled = ctl.infer({k: v[order] for k, v in feed.items()})
    np.testing.assert_array_equal(np.concatenate([a[EXIT_LAYER] for a in alone]), whole[EXIT_LAYER])
    np.testing.assert_allclose(np.concatenate([a[name] for a in alone]), whole[name], atol=1e-5)
    np.testing.assert_array_equal(shuffled[EXIT_LAYER], whole[EXIT_LAYER][order])
    np.testing.assert_allclose(shuffled[name], whole[name][order], atol=1e-5)


def test_a_never_exit_threshold_gives_the_final_layers_output(segments, manifest, feed, exported):
    import onnxruntime as ort

    never = _with_param(manifest, 1.0)  # the exit score is a sigmoid: always < 1
    with _controller(segments, never) as ctl:
        assert _every_segment(ctl, feed)[0]["score"].max() < 1.0
        res = ctl.infer(feed)
        assert ctl.segment_calls.tolist() == [1, 1] and ctl.histogram.tolist() == [0, len(res[EXIT_LAYER])]
    assert (res[EXIT_LAYER] == 2).all()
    # the plain single-graph export of the same checkpoint
    plain = exported("bert-embedding")
    plain_manifest = artifact.read_manifest(plain)
    sess = ort.InferenceSession(str(plain / plain_manifest.model_file), providers=["CPUExecutionProvider"])
    want = sess.run([plain_manifest.outputs[0].name], feed)[0]
    np.testing.assert_allclose(res["embeddings"], want, atol=1e-5)


def test_when_every_row_leaves_the_later_segments_do_not_run(segments, manifest, feed):
    always = _with_param(manifest, 0.0)
    with _controller(segments, always) as ctl:
        res = ctl.infer(feed)
        first = ctl.run_segment(0, feed)
        assert ctl.segment_calls.tolist() == [1, 0]
    assert (res[EXIT_LAYER] == 1).all()
    np.testing.assert_allclose(res["embeddings"], first["output"], atol=1e-6)


def test_the_histogram_counts_rows_per_exit_across_calls(segments, manifest, feed):
    with _controller(segments, manifest) as ctl:
        a = ctl.infer(feed)
        b = ctl.infer({k: v[:5] for k, v in feed.items()})
        layers = np.concatenate([a[EXIT_LAYER], b[EXIT_LAYER]])
        assert ctl.histogram.tolist() == [(layers == 1).sum(), (layers == 2).sum()]
        assert ctl.segment_calls[0] == 2


def test_segment_manifest_is_a_plain_artifact_of_that_segment(manifest):
    seg1 = segment_manifest(manifest, 1)
    assert seg1.exits is None and seg1.model_file == "seg1.onnx"
    assert [t.name for t in seg1.inputs] == ["hidden_in", "attention_mask"]
    assert [t.name for t in seg1.outputs] == ["output"]
    assert "packed" not in seg1.settings and seg1.tokenizer == manifest.tokenizer

"""Segments chained without numpy round trips (ORT I/O binding, OpenVINO tensors) and the length plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy import artifact, parity
from edgekit.deploy.exits.controller import EXIT_LAYER, ExitController, LengthPlan
from edgekit.deploy.runtime import target_for


@pytest.fixture(scope="module")
def segments(checkpoints, texts, tmp_path_factory) -> Path:
    """Two segments of the tiny BERT embedding model; the learned-score threshold is the median score."""
    from edgekit.build.exits.model import MultiExitModel, load_exits
    from edgekit.build.exits.segments import export_segments, torch_exits
    from edgekit.build.exits.train import TrainConfig, train_heads
    from edgekit.build.export import ExportOptions, parity_feed
    from edgekit.build.load import load
    from edgekit.deploy.exits.policies import make

    heads = tmp_path_factory.mktemp("linked-heads")
    model = MultiExitModel(load(checkpoints["bert-embedding"]))
    train_heads(model, texts * 2, None, heads, TrainConfig(epochs=1, batch=8), resume=False)
    model.save(heads)
    model = load_exits(heads)
    feed = parity_feed(model.encoder, ExportOptions(), model.encoder.info.max_length)
    scores = np.sort(torch_exits(model, feed)[0]["score"])
    out = tmp_path_factory.mktemp("linked") / "onnx"
    export_segments(model, make("learned", float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2), "embedding"), out)
    return out


def _run(directory: Path, feed, *, linked: bool | None = None, plan: LengthPlan | None = None, check: bool | None = None):
    manifest = artifact.read_manifest(directory)
    with ExitController(target_for(manifest), directory, manifest, length_plan=plan) as ctl:
        if linked is not None:
            ctl.linked = linked
        return [ctl.infer({k: v[i : i + 4] for k, v in feed.items()}, check=check) for i in range(0, len(feed["attention_mask"]), 4)]


def _cat(results, key):
    return np.concatenate([r[key] for r in results])


def test_ort_io_binding_keeps_the_hidden_state_a_runtime_value_and_gives_the_same_exits(segments):
    import onnxruntime as ort

    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    manifest = artifact.read_manifest(segments)
    with ExitController(target_for(manifest), segments, manifest) as ctl:
        assert ctl.linked
        _, hidden = ctl._run(0, feed, True)
        assert isinstance(hidden, ort.OrtValue) and hidden.shape()[0] == len(feed["attention_mask"])
    bound, plain = _run(segments, feed), _run(segments, feed, linked=False)
    layers = _cat(bound, EXIT_LAYER)
    assert 0 < (layers == 1).sum() < len(layers)  # some rows leave mid-batch: the gather path runs
    np.testing.assert_array_equal(layers, _cat(plain, EXIT_LAYER))
    np.testing.assert_array_equal(_cat(bound, "embeddings"), _cat(plain, "embeddings"))


def test_openvino_requests_chain_tensors_and_exit_where_pytorch_does(segments, tmp_path):
    pytest.importorskip("openvino")
    import openvino as ov

    from edgekit.build.exits.segments import compile_exits

    compile_exits(segments, "openvino-cpu", tmp_path / "ov")  # checks every row's exit against PyTorch's
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    manifest = artifact.read_manifest(tmp_path / "ov")
    with ExitController(target_for(manifest), tmp_path / "ov", manifest) as ctl:
        assert ctl.linked
        _, hidden = ctl._run(0, feed, True)
        assert isinstance(hidden, ov.Tensor)
    got, ort_ = _run(tmp_path / "ov", feed), _run(segments, feed)
    np.testing.assert_array_equal(_cat(got, EXIT_LAYER), _cat(ort_, EXIT_LAYER))
    np.testing.assert_allclose(_cat(got, "embeddings"), _cat(ort_, "embeddings"), atol=1e-4)


def test_the_length_plan_turns_exit_checks_off_for_short_sequences(segments):
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    length = feed["attention_mask"].shape[1]
    exits = _cat(_run(segments, feed), EXIT_LAYER)
    no_checks = _run(segments, feed, check=False)
    assert (exits == 1).any() and (_cat(no_checks, EXIT_LAYER) == 2).all()
    off_here = LengthPlan([length, 4 * length], [False, True])  # this feed's length is in the first bucket
    on_here = LengthPlan([length - 1, length], [False, True])
    np.testing.assert_array_equal(_cat(_run(segments, feed, plan=off_here), EXIT_LAYER), _cat(no_checks, EXIT_LAYER))
    np.testing.assert_array_equal(_cat(_run(segments, feed, plan=on_here), EXIT_LAYER), exits)
    assert LengthPlan([16, 32], [False, True]).checks(1000) and not LengthPlan([16, 32], [False, True]).checks(3)

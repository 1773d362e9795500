"""The single graph an exit artifact ships: it answers calls that check no exit, and is hash-checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy import artifact, parity
from edgekit.deploy.exits.controller import EXIT_LAYER, SINGLE_GRAPH, ExitController, LengthPlan, never_exits, single_manifest
from edgekit.deploy.exits.policies import make
from edgekit.deploy.runtime import Predictor, target_for
from edgekit.errors import ArtifactError


@pytest.fixture(scope="module")
def segments(checkpoints, tmp_path_factory) -> Path:
    """Two segments of the tiny BERT embedding model; the learned threshold is the median exit score."""
    from edgekit.build.exits.model import MultiExitModel
    from edgekit.build.exits.segments import export_segments, torch_exits
    from edgekit.build.export import ExportOptions, parity_feed
    from edgekit.build.load import load

    model = MultiExitModel(load(checkpoints["bert-embedding"])).eval()
    feed = parity_feed(model.encoder, ExportOptions(), model.encoder.info.max_length)
    s = np.sort(torch_exits(model, feed)[0]["score"])
    i = len(s) // 4 + int(np.argmax(np.diff(s)[len(s) // 4 : 3 * len(s) // 4]))
    out = tmp_path_factory.mktemp("single") / "onnx"
    export_segments(model, make("learned", float((s[i] + s[i + 1]) / 2), "embedding"), out)
    return out


def test_the_export_ships_the_single_graph_and_names_it_in_the_manifest(segments):
    m = artifact.read_manifest(segments)
    single = m.settings["exits"][SINGLE_GRAPH]
    assert single == {"model_file": "single.onnx", "packed": None} and "single.onnx" in m.files
    one = single_manifest(m)
    assert one.exits is None and one.model_file == "single.onnx" and one.outputs == m.outputs and one.inputs == m.inputs


def test_checks_off_run_the_single_graph_and_give_the_segments_final_output(segments):
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    manifest = artifact.read_manifest(segments)
    name = manifest.outputs[0].name
    with ExitController(target_for(manifest, segments), segments, manifest) as ctl:
        off = ctl.infer(feed, check=False)
        assert ctl.single_calls == 1 and ctl.segment_calls.tolist() == [0, 0]
        chained = ctl.run_segment(1, {"hidden_in": ctl.run_segment(0, feed)["hidden"], "attention_mask": feed["attention_mask"]})
        on = ctl.infer(feed, check=True)
        assert ctl.single_calls == 1 and ctl.segment_calls.tolist() == [1, 1]
    assert (off[EXIT_LAYER] == 2).all() and (on[EXIT_LAYER] == 1).any()  # with checks on, some rows leave
    np.testing.assert_allclose(off[name], chained["output"], atol=1e-5)


def test_the_length_plan_sends_short_inputs_to_the_single_graph(segments):
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    manifest = artifact.read_manifest(segments)
    length = feed["attention_mask"].shape[1]
    with ExitController(
        target_for(manifest, segments), segments, manifest, length_plan=LengthPlan([length, 2 * length], [False, True])
    ) as ctl:
        short = ctl.infer(feed)
        long = ctl.infer({k: np.concatenate([v, v], axis=1) for k, v in feed.items()})
        assert ctl.single_calls == 1 and ctl.segment_calls[0] == 1
    assert (short[EXIT_LAYER] == 2).all()
    assert long[EXIT_LAYER].shape == (len(feed["attention_mask"]),)


def test_a_policy_that_can_never_exit_checks_nothing():
    assert never_exits(make("entropy", 0.0), 6) and not never_exits(make("entropy", 0.05), 6)
    # patience: the agreement count reaches at most 4 at the 5th (last deciding) of 6 exits
    assert never_exits(make("patience", 5), 6) and not never_exits(make("patience", 4), 6)
    assert not never_exits(make("learned", 1.0), 6) and never_exits(make("learned", 0.5), 1)


def test_a_tampered_single_graph_is_refused_at_load(segments, tmp_path):
    copy = Path(shutil.copytree(segments, tmp_path / "copy"))
    raw = bytearray((copy / "single.onnx").read_bytes())
    raw[-8] ^= 0xFF
    (copy / "single.onnx").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"single\.onnx does not match its sha256"):
        Predictor(copy)


def test_an_artifact_without_a_single_graph_still_runs_every_segment(segments, tmp_path):
    feed, _ = parity.load_reference(segments / parity.REFERENCE)
    m = artifact.read_manifest(segments)
    exits = {k: v for k, v in m.settings["exits"].items() if k != SINGLE_GRAPH}
    old = m.model_copy(update={"settings": {**m.settings, "exits": exits}})
    with ExitController(target_for(old, segments), segments, old) as ctl:
        assert ctl.single is None
        res = ctl.infer(feed, check=False)
        assert ctl.segment_calls.tolist() == [1, 1] and ctl.single_calls == 0
    assert (res[EXIT_LAYER] == 2).all()

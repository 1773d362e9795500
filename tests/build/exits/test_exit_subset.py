"""Exits at a subset of the trained layers (fewer segment boundaries), and the shipped single graph per target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.build.exits import steps
from edgekit.build.exits.model import MultiExitModel
from edgekit.build.exits.segments import EXIT_REFERENCE, compile_exits, export_segments, subset, torch_exits
from edgekit.build.export import ExportOptions, parity_feed
from edgekit.build.load import load
from edgekit.deploy import artifact
from edgekit.deploy.exits.controller import EXIT_LAYER, SINGLE_GRAPH, ExitController
from edgekit.deploy.exits.policies import make, normalized_entropy, simulate
from edgekit.deploy.runtime import Predictor, target_for
from edgekit.errors import ConfigError


@pytest.fixture(scope="module")
def model(checkpoints, tmp_path_factory) -> MultiExitModel:
    """A 4-layer tiny BERT classifier (random weights) with exits after every layer."""
    import torch
    import transformers

    ckpt = Path(shutil.copytree(checkpoints["bert-classifier"], tmp_path_factory.mktemp("four") / "ckpt"))
    config = transformers.AutoConfig.from_pretrained(ckpt)
    config.num_hidden_layers = 4
    torch.manual_seed(3)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(ckpt)
    return MultiExitModel(load(ckpt)).eval()


@pytest.fixture(scope="module")
def feed(model) -> dict[str, np.ndarray]:
    return parity_feed(model.encoder, ExportOptions(), model.encoder.info.max_length)


@pytest.fixture(scope="module")
def policy(model, feed):
    """An entropy threshold in the widest gap of the middle half of exit 2's entropies (no row near it)."""
    s = np.sort(normalized_entropy(torch_exits(model, feed)[1]["output"]))
    lo, hi = len(s) // 4, 3 * len(s) // 4
    i = lo + int(np.argmax(np.diff(s)[lo:hi]))
    return make("entropy", float((s[i] + s[i + 1]) / 2), "classifier")


@pytest.fixture(scope="module")
def kept(model, policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("subset") / "onnx"
    export_segments(model, policy, out, layers=[2])
    return out


def test_a_subset_export_has_fewer_segments_and_exits_where_pytorch_does(model, policy, kept, feed):
    m = artifact.read_manifest(kept)
    assert model.config.layers == (1, 2, 3, 4)
    assert m.exits.layers == [2, 4] and [s.up_to_layer for s in m.exits.segments] == [2, 4]
    assert [s.model_file for s in m.exits.segments] == ["seg0.onnx", "seg1.onnx"]
    # PyTorch's multi-exit model, every exit: the policy over exits 2 and 4 only
    every = torch_exits(model, feed)
    want_at, want_out = simulate(policy, [every[1], every[3]])
    assert 0 < (want_at == 0).sum() < len(want_at)
    with ExitController(target_for(m, kept), kept, m) as ctl:
        got = ctl.infer(feed, check=True)
    np.testing.assert_array_equal(got[EXIT_LAYER], np.array([2, 4])[want_at])
    np.testing.assert_allclose(got[m.outputs[0].name], want_out, atol=1e-4)
    with np.load(kept / EXIT_REFERENCE) as z:
        np.testing.assert_array_equal(z["exit_at"], want_at)
        np.testing.assert_allclose(z["last"], every[3]["output"], atol=1e-6)


def test_subset_keeps_the_trained_heads_and_refuses_unknown_layers(model):
    sub = subset(model, [3, 1])
    assert sub.config.layers == (1, 3, 4) and sub.heads[1] is model.heads[2] and sub.encoder is model.encoder
    assert subset(model, None) is model and subset(model, [1, 2, 3, 4]) is model
    with pytest.raises(ConfigError, match="no exit at layer 7"):
        subset(model, [7])


def test_steps_export_uses_the_exits_the_calibration_kept(model, policy, tmp_path):
    heads = tmp_path / "heads"
    model.save(heads)
    chosen = {"policy": policy.name, "param": policy.param}
    doc = tmp_path / "calibration.json"
    doc.write_text(json.dumps({"chosen": chosen, "exits": [2], "length_plan": {"buckets": [16, 64], "check": [False, True]}}))
    m = steps.export(heads, f"entropy={policy.param}", tmp_path / "a", calibration=doc)
    assert m.exits.layers == [2, 4] and m.settings["exits"]["length_plan"] == {"buckets": [16, 64], "check": [False, True]}
    # a report object (CalibrationReport) with or without the ``exits`` field; explicit exits win
    report = SimpleNamespace(chosen=SimpleNamespace(**chosen), length_plan=None, exits=[1, 3])
    assert steps.export(heads, f"entropy={policy.param}", tmp_path / "b", calibration=report).exits.layers == [1, 3, 4]
    assert steps.export(heads, f"entropy={policy.param}", tmp_path / "c", calibration=report, exits=[3]).exits.layers == [3, 4]
    old = SimpleNamespace(chosen=SimpleNamespace(**chosen), length_plan=None)
    assert steps.export(heads, f"entropy={policy.param}", tmp_path / "d", calibration=old).exits.layers == [1, 2, 3, 4]


@pytest.mark.parametrize("target", ["ort-cpu", "openvino-cpu"])
def test_compile_exits_carries_the_single_graph(kept, target, feed, tmp_path):
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    m = compile_exits(kept, target, tmp_path / target)
    single = m.settings["exits"][SINGLE_GRAPH]["model_file"]
    assert single.startswith("single/") and single in m.files
    assert m.settings["exit_parity"]["single_graph_max_abs_diff"] < 1e-3
    with np.load(kept / EXIT_REFERENCE) as z:
        last = z["last"]
    with Predictor(tmp_path / target) as pred:
        out = pred.exits.infer(feed, check=False)
        assert pred.exits.single_calls == 1 and pred.exits.segment_calls.sum() == 0
    np.testing.assert_allclose(out[m.outputs[0].name], last, atol=1e-4)


def _gap(values: np.ndarray) -> float:
    """A threshold in the widest gap of the middle half of ``values`` (no row near it)."""
    s = np.sort(values)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    i = lo + int(np.argmax(np.diff(s)[lo:hi]))
    return float((s[i] + s[i + 1]) / 2)


def test_a_per_exit_vector_artifact_loads_and_exits_where_simulate_says(model, feed, tmp_path):
    every = torch_exits(model, feed)
    # exit 1 lets no row leave (threshold 0), exit 2 at its own gap, exit 3 at the gap of the rows still running
    h2 = normalized_entropy(every[1]["output"])
    t2 = _gap(h2)
    vec = [0.0, t2, _gap(normalized_entropy(every[2]["output"][h2 >= t2]))]
    policy = make("entropy", vec, "classifier")
    export_segments(model, policy, tmp_path / "onnx")
    m = artifact.read_manifest(tmp_path / "onnx")
    assert m.exits.param == vec and m.exits.layers == [1, 2, 3, 4]
    want_at, want_out = simulate(make("entropy", m.exits.param, "classifier"), every)
    assert (want_at == 0).sum() == 0 and 0 < (want_at == 1).sum() < len(want_at) and (want_at == 2).sum() > 0
    with Predictor(tmp_path / "onnx") as pred:
        got = pred.exits.infer(feed, check=True)
    np.testing.assert_array_equal(got[EXIT_LAYER], np.array([1, 2, 3, 4])[want_at])
    np.testing.assert_allclose(got[m.outputs[0].name], want_out, atol=1e-4)


def test_steps_export_wants_one_threshold_per_kept_exit(model, feed, tmp_path):
    heads = tmp_path / "heads"
    model.save(heads)
    with pytest.raises(ConfigError, match=r"entropy: 2 thresholds given, 1 expected \(.*kept exits at layers 2,4\)"):
        steps.export(heads, "entropy=0.1,0.2", tmp_path / "a", exits=[2])
    with pytest.raises(ConfigError, match=r"3 thresholds given, 2 expected"):
        steps.export(heads, "entropy=0.1,0.2,0.3", tmp_path / "b", exits=[1, 3])
    with pytest.raises(ConfigError, match="no such calibration.json"):
        steps.export(heads, "entropy=0.1", tmp_path / "c", calibration=tmp_path / "missing.json")
    every = torch_exits(model, feed)
    vec = [_gap(normalized_entropy(every[0]["output"])), _gap(normalized_entropy(every[2]["output"]))]
    m = steps.export(heads, "entropy=" + ",".join(f"{v:g}" for v in vec), tmp_path / "d", exits=[1, 3])
    assert m.exits.layers == [1, 3, 4] and len(m.exits.param) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_controller_refuses_a_vector_of_the_wrong_length_at_load(kept):
    from edgekit.errors import ArtifactError

    m = artifact.read_manifest(kept)
    bad = m.model_copy(update={"exits": m.exits.model_copy(update={"param": [0.1, 0.2]})})
    with pytest.raises(ArtifactError, match=r"entropy: 2 thresholds given, 1 expected") as err:
        ExitController(target_for(bad, kept), kept, bad)
    assert "\n" not in str(err.value)

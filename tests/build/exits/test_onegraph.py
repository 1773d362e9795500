"""The one-graph exit artifact: every exit's decision inside one ONNX model (If nodes), taking the
segment controller's decisions row by row, on both CPU runtimes, at any batch size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.onegraph import GRAPH_FILE, IF_NAME
from edgekit.build.exits.segments import compile_exits, export_segments, torch_exits
from edgekit.build.load import load
from edgekit.deploy import artifact, int8check
from edgekit.deploy.exits.controller import EXIT_LAYER, ExitController, latency_check
from edgekit.deploy.exits.policies import make, normalized_entropy, simulate
from edgekit.deploy.runtime import Predictor, target_for
from edgekit.errors import ArtifactError, ConfigError


@pytest.fixture
def heads(trained):
    return trained


def _threshold(model, feed) -> float:
    """An entropy threshold in the widest gap of the middle half of exit-1 entropies: rows on both sides, none near it."""
    ent = np.sort(normalized_entropy(torch_exits(model, feed)[0]["output"]))
    lo = len(ent) // 4
    i = int(np.argmax(np.diff(ent)[lo : 3 * len(ent) // 4 + 1])) + lo
    return float((ent[i] + ent[i + 1]) / 2)


def _feed(model, texts):
    return model.encoder.tokenize([t.upper() for t in texts] + texts)  # inputs the export's own check did not see


def test_the_one_graph_decides_like_the_torch_controller_at_every_batch_size(heads, texts, tmp_path):
    model = load_exits(heads)
    feed = _feed(model, texts)
    policy = make("entropy", _threshold(model, feed))
    exit_at, ref = simulate(policy, torch_exits(model, feed))
    assert 0 < (exit_at == 0).sum() < len(exit_at)  # rows leave at different exits
    m = export_segments(model, policy, tmp_path / "onnx", form="graph")
    assert m.exits.segments == [] and m.exits.graph.model_file == GRAPH_FILE == m.model_file
    assert [t.name for t in m.exits.graph.outputs] == ["logits", EXIT_LAYER] and GRAPH_FILE in m.files
    layers = np.asarray(model.config.layers)
    for target in ("onnx", "ort-cpu", "openvino-cpu"):
        where = tmp_path / "onnx" if target == "onnx" else tmp_path / target
        if target != "onnx":
            c = compile_exits(tmp_path / "onnx", target, where)
            assert c.settings["exit_parity"]["same_exit_layer"] == 1.0 and c.exits.graph.model_file.startswith("graph/")
        manifest = artifact.read_manifest(where)
        with ExitController(target_for(manifest, where), where, manifest) as ctl:
            for batch in (1, 3, len(exit_at)):
                res = [ctl.infer({k: v[i : i + batch] for k, v in feed.items()}, check=True) for i in range(0, len(exit_at), batch)]
                got = np.concatenate([r[EXIT_LAYER] for r in res])
                assert got.tolist() == layers[exit_at].tolist(), (target, batch)
                np.testing.assert_allclose(np.concatenate([r["logits"] for r in res]), ref, atol=1e-4)
            assert ctl.histogram.sum() == len(exit_at) * 3 and ctl.segment_calls.sum() == 0


@pytest.mark.parametrize(
    ("name", "param", "checkpoint"),
    [
        ("patience", 1, "bert-classifier"),
        ("margin", 0.05, "bert-classifier"),
        ("learned", 0.5, "distilbert-embedding"),
        ("similarity", 0.5, "distilbert-embedding"),
    ],
)
def test_every_policy_decides_inside_the_graph_as_in_numpy(name, param, checkpoint, checkpoints, texts, tmp_path):
    model = MultiExitModel(load(checkpoints[checkpoint]), [1]).eval()
    policy = make(name, param, model.task)
    feed = _feed(model, texts)
    exit_at, ref = simulate(policy, torch_exits(model, feed))
    export_segments(model, policy, tmp_path / "onnx", form="graph")  # the export's own check: its reference feed
    with Predictor(tmp_path / "onnx") as pred:
        res = pred.session.infer(feed)
    assert res[EXIT_LAYER].tolist() == np.asarray(model.config.layers)[exit_at].tolist()
    np.testing.assert_allclose(res[model.encoder.output_name], ref, atol=1e-4)


def test_each_stage_holds_its_own_weights_inside_its_branch(heads, tmp_path):
    model = load_exits(heads)
    export_segments(model, make("entropy", 0.1), tmp_path / "onnx", form="graph")
    graph = onnx.load(str(tmp_path / "onnx" / GRAPH_FILE)).graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    assert [n.name for n in ifs] == [IF_NAME.format(0)]  # exits at layers 1 and 2: one decision
    branch = {a.name: a.g for a in ifs[0].attribute}["else_branch"]
    main_weights = {i.name for i in graph.initializer if len(i.dims) == 2}
    branch_weights = {i.name for i in branch.initializer if len(i.dims) == 2}
    assert main_weights and branch_weights and not main_weights & branch_weights
    # layer 2's matmuls run in the branch only; the main graph holds layer 1 and the exit head
    assert any("layer.1" in n.name for n in branch.node) and not any("layer.1" in n.name for n in graph.node)


def test_calibration_times_the_one_graph_at_each_exit(heads, texts, tmp_path):
    from edgekit.build.exits.dev import measure_target

    model = load_exits(heads)
    feed = model.encoder.tokenize(texts)
    timing = measure_target(model, texts, feed["attention_mask"].sum(1), "ort-cpu", tmp_path, n=4, rounds=1, form="graph")
    assert timing.cum_ms.shape == (len(timing.buckets), 2) and (timing.cum_ms > 0).all()
    np.testing.assert_array_equal(timing.chain_ms, timing.single_ms)
    art = tmp_path / "graph" / "ort-cpu"
    manifest = artifact.read_manifest(art)
    assert [t.name for t in manifest.exits.graph.inputs][-2:] == ["exit_at", "use_policy"]
    with ExitController(target_for(manifest, art), art, manifest) as ctl:
        assert "exit_at" not in ctl.input_names  # left out, the timing graph decides as its policy says
        f = {k: v[:4] for k, v in feed.items()}
        assert ctl.forced(f, 0)[EXIT_LAYER].tolist() == [1] * 4 and ctl.forced(f, 1)[EXIT_LAYER].tolist() == [2] * 4
        with pytest.raises(ArtifactError, match="no segments to time"):
            ctl.timed_chain(f)
        check = latency_check(ctl, [{k: v[i : i + 1] for k, v in feed.items()} for i in range(4)])
    assert check["expected_latency_ms"] is None and check["single_graph_latency_ms"] > 0
    assert check["measured_over_single_graph"] == pytest.approx(check["measured_mean_latency_ms"] / check["single_graph_latency_ms"])


def test_the_one_graph_runs_in_openvino_sequence_buckets(heads, texts, tmp_path):
    # each input padded to the smallest compiled length that holds it: the same exits and outputs as dynamic shapes,
    # the single graph in the same buckets; calibration's timing graph too (its scalar inputs keep their shape)
    from edgekit.build.exits.dev import measure_target

    model = load_exits(heads)
    feed = _feed(model, texts)
    policy = make("entropy", _threshold(model, feed))
    outs = torch_exits(model, feed)
    exit_at, ref = simulate(policy, outs)
    export_segments(model, policy, tmp_path / "onnx", form="graph")
    lengths = feed["attention_mask"].sum(1)
    buckets = [int(np.median(lengths)), int(lengths.max())]
    m = compile_exits(tmp_path / "onnx", "openvino-cpu", tmp_path / "ov", options={"seq_lens": buckets})
    assert m.settings["buckets"] == buckets and m.settings["exit_parity"]["same_exit_layer"] == 1.0
    with Predictor(tmp_path / "ov") as pred:
        ctl = pred.exits
        assert ctl.graph.buckets == buckets == ctl.single.buckets
        seen = set()
        for i in range(len(exit_at)):
            row = {k: v[i : i + 1, : lengths[i]] for k, v in feed.items()}  # each row at its own length
            res = ctl.infer(row, check=True)
            seen.add(ctl.graph.last_bucket)
            assert res[EXIT_LAYER].tolist() == [model.config.layers[exit_at[i]]]
            np.testing.assert_allclose(res["logits"], ref[i : i + 1], atol=1e-4)
            np.testing.assert_allclose(ctl.single.infer(row)["logits"], outs[-1]["output"][i : i + 1], atol=1e-4)
        assert seen == set(buckets)  # both compiled lengths ran
    both = [t.upper() for t in texts] + texts  # _feed's texts, row for row
    timing = measure_target(model, both, lengths, "openvino-cpu", tmp_path / "cal", n=4, rounds=1, options={"seq_lens": buckets})
    assert (timing.cum_ms > 0).all()
    assert artifact.read_manifest(tmp_path / "cal" / "graph" / "openvino-cpu").settings["buckets"] == buckets


def test_an_unknown_form_is_refused(heads, tmp_path):
    with pytest.raises(ConfigError, match="unknown early-exit form 'one'"):
        export_segments(load_exits(heads), make("entropy", 0.1), tmp_path / "onnx", form="one")
    assert not (tmp_path / "onnx").exists()


def test_quantized_matmuls_inside_branches_are_counted(heads, tmp_path):
    """int8check walks the If branches: a graph whose quantized matmuls sit in subgraphs is not reported as having none."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.INT8, [2, 2], [1, -1, 0, 1])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    body = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")],
        "b",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, s],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])], "o", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    )
    top = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=body, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    assert int8check.quantized_matmuls(helper.make_model(top)) == ["mm"]


def test_both_forms_answer_single_inputs_with_the_graph_and_batches_with_the_segments(heads, texts, tmp_path):
    model = load_exits(heads)
    feed = _feed(model, texts)
    policy = make("entropy", _threshold(model, feed))
    exit_at, ref = simulate(policy, torch_exits(model, feed))
    m = export_segments(model, policy, tmp_path / "onnx", form="both")
    assert m.exits.graph is not None and len(m.exits.segments) == 2 and m.model_file == GRAPH_FILE
    c = compile_exits(tmp_path / "onnx", "ort-cpu", tmp_path / "ort")
    assert c.settings["exit_parity"]["same_exit_layer"] == 1.0 and c.exits.graph and len(c.exits.segments) == 2
    layers = np.asarray(model.config.layers)[exit_at]
    with ExitController(target_for(c, tmp_path / "ort"), tmp_path / "ort", c) as ctl:
        ones = [ctl.infer({k: v[i : i + 1] for k, v in feed.items()}, check=True) for i in range(len(exit_at))]
        assert ctl.segment_calls.sum() == 0  # single inputs: the one graph
        batch = ctl.infer(feed, check=True)
        assert ctl.segment_calls[0] == 1  # a batch: the segments, rows dropped as they leave
    assert np.concatenate([r[EXIT_LAYER] for r in ones]).tolist() == batch[EXIT_LAYER].tolist() == layers.tolist()
    np.testing.assert_allclose(batch["logits"], ref, atol=1e-4)


def test_timing_by_exit_never_repeats_a_shape_on_one_model():
    """Deployed batch-1 calls each follow a call at another text's length; timing each exit in its own pass
    over the texts keeps that true of every timed call (OpenVINO charges the first call at a new shape)."""
    from edgekit.build.exits.dev import by_exit

    calls = []
    feeds = [{"input_ids": np.zeros((1, n), np.int64)} for n in (5, 7, 9)]
    done = []
    to_exit, one = by_exit(
        feeds,
        lambda f, k: calls.append(("graph", f["input_ids"].shape[1], k)),
        lambda f: calls.append(("single", f["input_ids"].shape[1], None)),
        exits=3,
        rounds=2,
        progress=lambda d, t: done.append((d, t)),
    )
    assert to_exit.shape == (2, 3, 3) and one.shape == (6, 3)
    for model in ("graph", "single"):
        seq = [n for m, n, _ in calls if m == model][3:]  # after the warm-up (one call per feed)
        assert all(a != b for a, b in zip(seq, seq[1:]))
    timed_exits = [k for m, _, k in calls[6:] if m == "graph"]
    assert timed_exits == [k for _ in range(2) for k in range(3) for _ in feeds]
    assert done[-1] == (18, 18) and len(done) == 6

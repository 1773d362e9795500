"""Early-exit segments: one ONNX graph per exit, the PyTorch controller reference, the checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.segments import (
    EXACT,
    EXIT_REFERENCE,
    LOWERED,
    check_controller,
    compile_exits,
    export_segments,
    torch_exits,
)
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.export import ExportOptions, parity_feed
from edgekit.build.load import load
from edgekit.deploy import artifact, parity
from edgekit.deploy.exits.policies import make, simulate
from edgekit.errors import ConfigError, ParityError, TargetError


def _threshold(scores: np.ndarray) -> float:
    """A learned-policy threshold in the widest gap of the middle half of ``scores``: some rows leave
    early, some do not, and none sits near the threshold (runtimes differ from PyTorch by ~1e-6)."""
    s = np.sort(scores)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    i = lo + int(np.argmax(np.diff(s)[lo:hi]))
    return float((s[i] + s[i + 1]) / 2)


@pytest.fixture(scope="module")
def exits_model(checkpoints, texts, tmp_path_factory) -> MultiExitModel:
    """Exit heads on the tiny BERT embedding model (mean pooling: the learned exit score varies per text)."""
    out = tmp_path_factory.mktemp("segment-heads")
    model = MultiExitModel(load(checkpoints["bert-embedding"]))
    train_heads(model, texts * 2, None, out, TrainConfig(epochs=1, batch=8), resume=False)
    model.save(out)
    return load_exits(out)


@pytest.fixture(scope="module")
def feed(exits_model) -> dict[str, np.ndarray]:
    """The feed the export checks itself on."""
    return parity_feed(exits_model.encoder, ExportOptions(), exits_model.encoder.info.max_length)


@pytest.fixture(scope="module")
def segments(exits_model, feed, tmp_path_factory) -> Path:
    policy = make("learned", _threshold(torch_exits(exits_model, feed)[0]["score"]), "embedding")
    out = tmp_path_factory.mktemp("segments") / "onnx"
    export_segments(exits_model, policy, out)
    return out


def _ort(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_one_graph_per_segment_with_the_documented_inputs_and_outputs(segments, exits_model):
    m = artifact.read_manifest(segments)
    assert m.exits.layers == [1, 2] and m.exits.policy == "learned" and m.model_file == "seg0.onnx"
    assert [s.model_file for s in m.exits.segments] == ["seg0.onnx", "seg1.onnx"]
    assert [s.up_to_layer for s in m.exits.segments] == [1, 2]
    assert m.outputs[0].name == exits_model.encoder.output_name == "embeddings"
    assert m.settings["exit_tolerance"] == EXACT and m.precision == "fp32"
    seg0, seg1 = (onnx.load(str(segments / f)) for f in ("seg0.onnx", "seg1.onnx"))
    assert [i.name for i in seg0.graph.input] == list(exits_model.encoder.spec.input_names)
    # the learned policy decides on the score: no other head output is in the graph
    assert [o.name for o in seg0.graph.output] == ["hidden", "output", "score"]
    assert [i.name for i in seg1.graph.input] == ["hidden_in", "attention_mask"]
    assert [o.name for o in seg1.graph.output] == ["output"]  # the last passes nothing on and decides nothing
    for spec, graph in zip(m.exits.segments, (seg0, seg1)):
        assert [t.name for t in spec.outputs] == [o.name for o in graph.graph.output]
    # each segment runs its own layers: one attention softmax per layer
    assert [sum(n.op_type == "Softmax" for n in g.graph.node) for g in (seg0, seg1)] == [1, 1]


def test_chained_segments_reproduce_every_exit_of_pytorch(segments, exits_model, texts):
    feed = exits_model.encoder.tokenize(texts)
    want = torch_exits(exits_model, feed)
    first = dict(zip(["hidden", "output", "score"], _ort(segments / "seg0.onnx").run(None, feed)))
    second = dict(
        zip(["output"], _ort(segments / "seg1.onnx").run(None, {"hidden_in": first["hidden"], "attention_mask": feed["attention_mask"]}))
    )
    for got, ref in ((first, want[0]), (second, want[1])):
        for key in got.keys() - {"hidden"}:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, err_msg=key)
    # the last exit is the model itself
    np.testing.assert_allclose(second["output"], exits_model.encoder.run(feed), atol=1e-5)


def test_the_reference_holds_pytorchs_controller_decisions(segments, exits_model, feed):
    m = artifact.read_manifest(segments)
    policy = make(m.exits.policy, m.exits.param, "embedding")
    with np.load(segments / EXIT_REFERENCE) as z:
        for k, v in feed.items():
            np.testing.assert_array_equal(z[f"input.{k}"], v)
        exit_at, output = z["exit_at"], z["output"]
    want_at, want_out = simulate(policy, torch_exits(exits_model, feed))
    np.testing.assert_array_equal(exit_at, want_at)
    np.testing.assert_allclose(output, want_out, atol=1e-6)
    assert 0 < (exit_at == 0).sum() < len(exit_at)  # the rows do not all leave at the same exit
    _, reference = parity.load_reference(segments / parity.REFERENCE)
    np.testing.assert_array_equal(reference, output)


def test_check_controller_catches_decisions_that_differ(segments, tmp_path):
    import shutil

    m = artifact.read_manifest(segments)
    check = check_controller(segments, m, "onnx")
    assert check["same_exit_layer"] == 1.0 and check["max_abs_diff"] < EXACT["atol"] and check["tolerance"] == EXACT
    copy = Path(shutil.copytree(segments, tmp_path / "copy"))
    with np.load(copy / EXIT_REFERENCE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["exit_at"] = arrays["exit_at"].copy()
    arrays["exit_at"][:3] = 1 - arrays["exit_at"][:3]  # three rows said to leave elsewhere
    np.savez_compressed(copy / EXIT_REFERENCE, **arrays)
    with pytest.raises(ParityError, match=r"^onnx: early-exit decisions differ from PyTorch \(\d+\.\d% of rows exit at the same layer"):
        check_controller(copy, m, "onnx")


def test_a_lowered_tolerance_lets_one_row_in_ten_be_further_off(segments, tmp_path):
    """A binary code on a boundary moves one text far; a wrong artifact moves every text."""
    import shutil

    m = artifact.read_manifest(segments)
    lowered = m.model_copy(update={"settings": {**m.settings, "exit_tolerance": LOWERED}})
    copy = Path(shutil.copytree(segments, tmp_path / "copy"))
    with np.load(copy / EXIT_REFERENCE) as z:
        arrays = {k: z[k] for k in z.files}
    rows = len(arrays["exit_at"])
    assert rows >= 10, rows  # room for one row in ten
    for key in ("output", "last"):
        arrays[key] = arrays[key].copy()
        arrays[key][0] += 2 * LOWERED["atol"]
    np.savez_compressed(copy / EXIT_REFERENCE, **arrays)
    check = check_controller(copy, lowered, "onnx")
    assert check["max_abs_diff"] == pytest.approx(2 * LOWERED["atol"], rel=1e-3)
    assert check["single_graph_max_abs_diff"] == pytest.approx(2 * LOWERED["atol"], rel=1e-3)
    with pytest.raises(ParityError, match=r"allowed: 96%, 0\.5\)"):
        check_controller(
            copy, m.model_copy(update={"settings": {**m.settings, "exit_tolerance": {**LOWERED, "max_rows_over_atol": 0.0}}}), "onnx"
        )
    for key in ("output", "last"):
        arrays[key] = arrays[key] + 2 * LOWERED["atol"]
    np.savez_compressed(copy / EXIT_REFERENCE, **arrays)
    with pytest.raises(ParityError, match="early-exit decisions differ from PyTorch"):
        check_controller(copy, lowered, "onnx")


def test_a_static_shape_target_is_refused(segments, tmp_path):
    # the NPU runs only static shapes: segments exchange [batch, sequence, hidden] tensors of any size
    with pytest.raises(TargetError, match="dynamic early exit cannot run on openvino-npu") as info:
        compile_exits(segments, "openvino-npu", tmp_path / "npu")
    assert "edgekit exits prune" in info.value.hint
    assert not (tmp_path / "npu").exists()


@pytest.mark.parametrize("option", [{"seq_lens": [64]}, {"data": "texts.txt"}])
def test_sequence_buckets_are_refused_for_segments(segments, option, tmp_path):
    # segments hand the hidden state between dynamic-shape sessions; the one graph takes buckets (test_onegraph)
    with pytest.raises(TargetError, match="one-graph exit form only") as info:
        compile_exits(segments, "openvino-cpu", tmp_path / "ov", options=option)
    assert "--form graph" in info.value.hint
    assert not (tmp_path / "ov").exists()


def test_sequence_buckets_for_exits_are_openvino_cpu_only(segments, tmp_path):
    with pytest.raises(TargetError, match="openvino-cpu only, not ort-mobile"):
        compile_exits(segments, "ort-mobile", tmp_path / "m", options={"seq_lens": [128], "batch": 1})
    assert not (tmp_path / "m").exists()


def test_a_plain_export_is_not_compiled_as_segments(exported, tmp_path):
    with pytest.raises(ConfigError, match="not an early-exit export"):
        compile_exits(exported("bert-embedding"), "ort-cpu", tmp_path / "x")

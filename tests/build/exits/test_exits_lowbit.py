"""Early exit on a quantized (binary/ternary) checkpoint: heads train on the fake-quant model,
and the deployed segments and depth cut are lowered INT8 graphs (edgekit.build.lower) that exit
where the fake-quant torch controller does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import quantized_checkpoint

from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.segments import LOWERED, compile_exits, export_pruned, export_segments, quant_config, torch_exits
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.export import ExportOptions, parity_feed
from edgekit.build.load import load
from edgekit.deploy import artifact, int8check, packing
from edgekit.deploy.exits.policies import make, normalized_entropy, simulate
from edgekit.deploy.runtime import Predictor
from edgekit.errors import ArtifactError

# the INT8 execution these tests check: on openvino-cpu a W1A1 exit artifact otherwise runs the 1-bit kernel
# (tested on its own below, where the kernel is built into the test session's cache)
INT8_PATH = {"ort-cpu": None, "openvino-cpu": {"xnor": "off"}}


@pytest.fixture(scope="module", params=["bit-w1a1", "bit-w1e1a1"])
def heads(request, checkpoints, encoders, texts, tmp_path_factory):
    """Exit heads trained on a calibrated W1A1 tiny BERT classifier (3 layers: exits at 1, 2, 3),
    with float or binary embeddings."""
    root = tmp_path_factory.mktemp("lowbit-exits")
    ckpt = quantized_checkpoint(checkpoints, encoders, root / "ckpt", "bert-classifier", request.param)
    model = MultiExitModel(load(ckpt))
    train_heads(model, texts * 4, None, root / "heads", TrainConfig(epochs=3, batch=4), resume=False)
    model.save(root / "heads")
    return root / "heads"


def _middle_threshold(model, texts) -> float:
    """An entropy threshold that some rows pass and some do not, with no row near it.

    The first exit's entropies on every row the tests run (the export's own check feed and
    ``texts``) are sorted; the threshold is the midpoint of the widest gap among the middle half.
    A threshold equal to a row's entropy (e.g. the median of an odd number of rows) leaves
    that row's exit to float rounding: a W1E1A1 model gives every input cut to max_length the
    same first-exit output, and the INT8 kernels of one CPU put those rows on the other side.
    """
    feeds = [parity_feed(model.encoder, ExportOptions(), model.encoder.info.max_length), model.encoder.tokenize(texts)]
    ent = np.sort(np.concatenate([normalized_entropy(torch_exits(model, f)[0]["output"]) for f in feeds]))
    lo, hi = len(ent) // 4, 3 * len(ent) // 4
    gaps = np.diff(ent[lo : hi + 1])
    k = int(np.argmax(gaps))
    # INT8 segments vs the fake-quant model move these entropies by ~3e-11 (measured on this model)
    assert gaps[k] / 2 > 1e-9, f"no threshold with a margin: first-exit entropies {ent}"
    return float((ent[lo + k] + ent[lo + k + 1]) / 2)


def test_segments_of_a_quantized_model_are_int8_and_exit_like_fake_quant_torch(heads, texts, tmp_path):
    model = load_exits(heads)
    policy = make("entropy", _middle_threshold(model, texts))
    feed = model.encoder.tokenize(texts)
    exit_at, ref = simulate(policy, torch_exits(model, feed))  # the fake-quant model, before lowering
    m = export_segments(model, policy, tmp_path / "onnx")
    assert m.precision == "int8" and m.settings["exit_tolerance"] == LOWERED
    lowered = m.settings["lowered"]
    assert lowered["scheme"] in ("bit-w1a1", "bit-w1e1a1") and lowered["modules"]["linear"] > 0
    # binary embeddings are lowered too (Gather on int8 codes), in the first segment only
    assert (lowered["modules"]["embedding"] > 0) == (lowered["scheme"] == "bit-w1e1a1")
    for i, seg in enumerate(m.exits.segments):
        graph = onnx.load(str(tmp_path / "onnx" / seg.model_file))
        assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node), seg.model_file
        report = lowered["onnxruntime_int8"][i]
        assert report["all_int8"] and report["integer_total"] == report["expected_int8"] > 0
        # the binary codes left the segment's model file: 1 bit each in seg{i}.lowbit
        assert seg.packed is not None and seg.packed["file"] == f"seg{i}.lowbit"
        assert {t["bits"] for t in seg.packed["tensors"].values()} == {1}
        assert (tmp_path / "onnx" / seg.packed["file"]).stat().st_size == seg.packed["packed_bytes"]
        assert not any(init.name in seg.packed["tensors"] for init in graph.graph.initializer)
    for target in ("ort-cpu", "openvino-cpu"):
        c = compile_exits(tmp_path / "onnx", target, tmp_path / target, options=INT8_PATH[target])
        assert c.settings["exit_parity"]["same_exit_layer"] >= LOWERED["min_same_exit"]
        assert "packed" not in c.settings and all(seg.packed for seg in c.exits.segments), target  # packed per segment
        with Predictor(tmp_path / target) as pred:
            res = pred.session.infer(pred.tokenizer(texts))
        same = res["exit_layer"] == np.asarray(model.config.layers)[exit_at]
        assert same.mean() >= 0.9, target
        np.testing.assert_allclose(res["logits"][same], ref[same], atol=LOWERED["atol"])


def test_the_one_graph_of_a_quantized_model_is_int8_packed_and_exits_like_fake_quant_torch(heads, texts, tmp_path):
    """The one-graph form: every branch's matmuls INT8 on both runtimes, the branches' binary codes packed with
    the subgraph they belong to, and the exits those of the fake-quant torch controller."""
    model = load_exits(heads)
    policy = make("entropy", _middle_threshold(model, texts))
    exit_at, ref = simulate(policy, torch_exits(model, model.encoder.tokenize(texts)))
    m = export_segments(model, policy, tmp_path / "onnx", form="graph")
    report = m.settings["lowered"]["onnxruntime_int8"][0]
    assert report["all_int8"] and report["integer_total"] == report["expected_int8"] > 0
    packed = m.exits.graph.packed
    assert {t.get("graph", "") for t in packed["tensors"].values()} >= {"", "exit_if_0/else_branch"}  # layer 1, and later
    for target in ("ort-cpu", "openvino-cpu"):
        c = compile_exits(tmp_path / "onnx", target, tmp_path / target, options=INT8_PATH[target])
        assert c.settings["exit_parity"]["same_exit_layer"] >= LOWERED["min_same_exit"] and c.exits.graph.packed, target
        assert c.settings["int8"]["all_int8"], target  # the branches' matmuls counted too
        expected = report["expected_int8"]
        assert c.settings["int8"].get("integer_total", c.settings["int8"].get("int8")) >= expected, target
        with Predictor(tmp_path / target) as pred:
            res = pred.session.infer(pred.tokenizer(texts))
        same = res["exit_layer"] == np.asarray(model.config.layers)[exit_at]
        assert same.mean() >= 0.9, target
        np.testing.assert_allclose(res["logits"][same], ref[same], atol=LOWERED["atol"])


def test_depth_cut_of_a_quantized_model_is_a_lowered_int8_graph(heads, texts, tmp_path):
    model = load_exits(heads)
    ref = torch_exits(model, model.encoder.tokenize(texts))[0]["output"]  # exit 1, fake-quant
    m = export_pruned(model, 1, tmp_path / "cut")
    assert m.precision == "int8" and m.settings["pruned_to_layer"] == 1
    assert m.settings["lowered"]["onnxruntime_int8"]["all_int8"]
    assert m.parity.passed
    graph = onnx.load_from_string(packing.model_bytes(tmp_path / "cut", m.model_file, m.settings.get("packed")))
    assert len(int8check.quantized_matmuls(graph)) > 0
    with Predictor(tmp_path / "cut") as pred:
        out = pred.run(pred.tokenizer(texts))
    np.testing.assert_allclose(out, ref, atol=LOWERED["atol"])
    assert artifact.read_manifest(tmp_path / "cut").settings["packed"]["tensors"]


def test_tampered_packed_segment_is_refused(heads, texts, tmp_path):
    model = load_exits(heads)
    m = export_segments(model, make("entropy", _middle_threshold(model, texts)), tmp_path / "onnx")
    packed = m.exits.segments[1].packed
    path = tmp_path / "onnx" / packed["file"]
    blob = bytearray(path.read_bytes())
    blob[0] ^= 0xFF  # flips 8 binary weights of the first packed tensor
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        with Predictor(tmp_path / "onnx", verify=False) as pred:  # verify=False: past the manifest's file hashes
            pred.session.infer(pred.tokenizer(texts))


def test_joint_heads_on_a_quantized_checkpoint_save_a_quantized_backbone(checkpoints, encoders, texts, tmp_path):
    """Joint training moves a fake-quant backbone: the saved backbone must load back as that same
    quantized model (its quantizers and their learned scales), so every exit gives what it gave in training."""
    ckpt = quantized_checkpoint(checkpoints, encoders, tmp_path / "ckpt", "bert-classifier", "ternary-w2a8")
    model = MultiExitModel(load(ckpt))
    cfg = TrainConfig(epochs=2, batch=4, freeze_backbone=False, backbone_lr=1e-3, device="cpu", final_tolerance=100.0)
    train_heads(model, texts * 4, [0, 1, 2, 0, 1] * 4, tmp_path / "h", cfg, resume=False)
    model.save(tmp_path / "h")
    tokens = model.encoder.tokenize(texts)
    trained = torch_exits(model, tokens)
    again = load_exits(tmp_path / "h")
    assert quant_config(again) is not None and quant_config(again).scheme == "ternary-w2a8"
    for a, b in zip(torch_exits(again, tokens), trained, strict=True):
        np.testing.assert_allclose(a["output"], b["output"], atol=1e-5)
    moved = torch_exits(MultiExitModel(load(ckpt)), tokens)  # the original quantized backbone, untrained
    assert not np.allclose(moved[0]["output"], trained[0]["output"], atol=1e-3)


def test_exit_artifact_runs_the_1bit_kernel_in_every_part_on_openvino(heads, texts, xnor_lib, tmp_path):
    """openvino-cpu, no options: the binary matmuls of the one graph (its If branches too), of every segment and
    of the single graph run as the 1-bit kernel; the library ships once, at the artifact's kernels/; exits and
    outputs those of the same artifact compiled with xnor=off (the same integer dot products)."""
    from edgekit.deploy.kernels import xnor

    model = load_exits(heads)
    m = export_segments(model, make("entropy", _middle_threshold(model, texts)), tmp_path / "onnx", form="both")
    on = compile_exits(tmp_path / "onnx", "openvino-cpu", tmp_path / "on")
    off = compile_exits(tmp_path / "onnx", "openvino-cpu", tmp_path / "off", options={"xnor": "off"})
    rec = on.settings["kernels"]["xnor"]
    assert rec["used"] and rec["library"] == f"kernels/{xnor.LIBRARY}" and (tmp_path / "on" / rec["library"]).is_file()
    parts = rec["parts"]
    assert set(parts) == {"graph", "single", *(f"seg{i}" for i in range(len(m.exits.segments)))}
    assert not any((tmp_path / "on" / part / "kernels").exists() for part in parts)  # one copy of the library
    binary = parts["single"]["rewritten"]
    assert binary >= 6 * len(model.config.layers)  # every layer's Q, K, V, output, FFN-in and FFN-out
    assert parts["graph"]["rewritten"] == binary == sum(parts[f"seg{i}"]["rewritten"] for i in range(len(m.exits.segments)))
    assert parts["graph"]["attention"] == len(model.config.layers)  # the branches' attentions fused too
    assert on.settings["int8"]["all_int8"] and "kernels" not in off.settings
    # the compiled IRs themselves: the one graph's branches hold as many kernel nodes as the single graph
    ir = {part: (tmp_path / "on" / part / "model.xml").read_text() for part in parts}
    segs = [f"seg{i}" for i in range(len(m.exits.segments))]
    for op in ("BinaryMatMul", "BinaryAttention"):
        n = ir["single"].count(f'type="{op}"')
        assert n > 0 and ir["graph"].count(f'type="{op}"') == n == sum(ir[s].count(f'type="{op}"') for s in segs), op
    assert not any('type="FakeQuantize"' in text for text in ir.values())  # no binary matmul left on the INT8 path
    with Predictor(tmp_path / "on") as a, Predictor(tmp_path / "off") as b:
        batch_a, batch_b = a.session.infer(a.tokenizer(texts)), b.session.infer(b.tokenizer(texts))  # the segments
        np.testing.assert_array_equal(batch_a["exit_layer"], batch_b["exit_layer"])
        np.testing.assert_allclose(batch_a["logits"], batch_b["logits"], atol=1e-5)
        for t in texts[:6]:  # batch 1: the one graph
            one_a, one_b = a.session.infer(a.tokenizer([t])), b.session.infer(b.tokenizer([t]))
            assert one_a["exit_layer"].tolist() == one_b["exit_layer"].tolist()
            np.testing.assert_allclose(one_a["logits"], one_b["logits"], atol=1e-5)

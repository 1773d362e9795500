"""Early exit on tiny real checkpoints: heads, training, segments on each runtime, pruning,
and the deployed controller taking exactly PyTorch's decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.build.exits import steps as build
from edgekit.build.exits.calibrate import MIN_SAVING
from edgekit.build.exits.model import MultiExitModel, load_exits
from edgekit.build.exits.segments import compile_exits, export_pruned, export_segments, torch_exits
from edgekit.build.exits.train import TrainConfig, train_heads
from edgekit.build.load import load
from edgekit.deploy import artifact
from edgekit.deploy.exits.policies import make, normalized_entropy, simulate
from edgekit.deploy.runtime import Predictor
from edgekit.errors import ConfigError, DataError, TargetError


def _threshold(model, texts):
    """An entropy threshold in a wide gap of exit-1 entropies, so about half the rows leave early."""
    ent = np.sort(normalized_entropy(torch_exits(model, model.encoder.tokenize(texts))[0]["output"]))
    i = int(np.argmax(np.diff(ent)[len(ent) // 4 : 3 * len(ent) // 4 + 1])) + len(ent) // 4
    return float((ent[i] + ent[i + 1]) / 2)


def test_final_exit_is_the_original_model_exactly(checkpoint_name, checkpoints, texts):
    enc = load(checkpoints[checkpoint_name])
    model = MultiExitModel(enc, [1])
    assert model.config.layers == (1, 2)
    feed = enc.tokenize(texts)
    ours = torch_exits(model, feed)[-1]["output"]
    np.testing.assert_allclose(ours, enc.run(feed), atol=1e-5)


def test_exits_at_missing_layers_are_refused(checkpoints):
    with pytest.raises(ConfigError, match="layer 5 does not exist: the model has layers 1..2"):
        MultiExitModel(load(checkpoints["bert-classifier"]), [1, 5])


def test_training_decreases_loss_and_resumes(checkpoints, texts, tmp_path):
    import torch

    torch.manual_seed(0)  # the heads' scores start from a random init: the same one whatever ran before in this process
    model = MultiExitModel(load(checkpoints["roberta-classifier"]))
    first = train_heads(model, texts * 4, None, tmp_path, TrainConfig(epochs=10, batch=20, lr=3e-3), resume=False)
    assert first["loss"][-1] < first["loss"][0]
    again = train_heads(model, texts * 4, [0, 1, 2, 0, 1] * 4, tmp_path, TrainConfig(epochs=12, batch=20, lr=3e-3), resume=True)
    assert len(again["loss"]) == 2  # epochs 11 and 12 only


def test_segments_decide_like_torch_on_both_runtimes(trained, texts, tmp_path):
    model = load_exits(trained)
    policy = make("entropy", _threshold(model, texts))
    export_segments(model, policy, tmp_path / "onnx")
    new_texts = [t.upper() for t in texts] + texts  # inputs the export's own check did not see
    feed = model.encoder.tokenize(new_texts)
    exit_at, ref = simulate(policy, torch_exits(model, feed))
    assert 0 < (exit_at == 0).sum() < len(exit_at)  # rows leave at different exits: the batch does not agree
    for target in ("ort-cpu", "openvino-cpu"):
        m = compile_exits(tmp_path / "onnx", target, tmp_path / target)
        assert m.settings["exit_parity"]["same_exit_layer"] == 1.0
        with Predictor(tmp_path / target) as pred:
            res = pred.session.infer(pred.tokenizer(new_texts))
        assert res["exit_layer"].tolist() == np.asarray(model.config.layers)[exit_at].tolist()
        np.testing.assert_allclose(res["logits"], ref, atol=1e-4)


def test_similarity_exits_for_an_embedding_model(checkpoints, texts, tmp_path):
    model = MultiExitModel(load(checkpoints["distilbert-embedding"]))
    m = export_segments(model, make("similarity", 0.5, "embedding"), tmp_path / "onnx")
    assert m.exits.policy == "similarity" and m.outputs[0].name == "embeddings"
    m = compile_exits(tmp_path / "onnx", "ort-cpu", tmp_path / "ort")
    assert m.settings["exit_parity"]["same_exit_layer"] == 1.0


def test_eval_can_embed_the_docs_without_exits(checkpoints, tmp_path):
    """``eval --docs-without-exits``: on pairs, the docs run the single graph the exit artifact ships (the original
    model's embeddings), only the queries take exits; elsewhere the option is ignored with a note."""
    from edgekit.deploy import data
    from edgekit.deploy.eval import evaluate, retrieval

    model = MultiExitModel(load(checkpoints["distilbert-embedding"]))
    export_segments(model, make("learned", 0.0, "embedding"), tmp_path / "onnx")  # every text leaves at the first exit
    compile_exits(tmp_path / "onnx", "ort-cpu", tmp_path / "ort")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(data.shipped("pydoc_pairs.jsonl").read_text().splitlines(keepends=True)[:20]))
    queries, docs = data.read_pairs(pairs)
    exits = torch_exits(model, model.encoder.tokenize(queries + docs, max_length=model.encoder.info.max_length))
    early, final = exits[0]["output"], exits[-1]["output"]
    both = evaluate(tmp_path / "ort", pairs, fidelity=False)
    assert both.metrics["mean_exit_layer"] == model.config.layers[0] and both.metrics["recall@1"] == pytest.approx(
        retrieval(early[:20], early[20:])["recall@1"]
    )
    indexed = evaluate(tmp_path / "ort", pairs, fidelity=False, docs_without_exits=True)
    assert indexed.metrics["mrr"] == pytest.approx(retrieval(early[:20], final[20:])["mrr"], abs=1e-4)
    assert any("docs embedded by the single graph" in n for n in indexed.notes)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(queries) + "\n")
    assert any("ignored" in n for n in evaluate(tmp_path / "ort", texts, fidelity=False, docs_without_exits=True).notes)


def test_pruned_model_is_a_plain_shorter_graph(trained, tmp_path, texts):
    import onnx

    model = load_exits(trained)
    m = export_pruned(model, 1, tmp_path / "pruned")
    assert m.parity.passed and m.exits is None
    full = onnx.load(str(tmp_path / "pruned" / "model.onnx"))
    assert sum(n.op_type == "Softmax" for n in full.graph.node) == 1  # one attention layer kept of two
    feed = model.encoder.tokenize(texts)
    with Predictor(tmp_path / "pruned") as pred:
        np.testing.assert_allclose(pred.run(feed), torch_exits(model, feed)[0]["output"], atol=1e-4)
    with pytest.raises(ConfigError, match="no exit at layer 7"):
        export_pruned(model, 7, tmp_path / "p7")


def test_calibrate_with_measured_segments_and_unlabeled_dev(trained, texts, tmp_path):
    dev = tmp_path / "dev.txt"
    dev.write_text("\n".join(texts * 2))
    with pytest.raises(Exception, match="needs labels"):
        build.calibrate(trained, dev, tmp_path / "cal")
    with pytest.raises(DataError, match="dev set too small for a 90% bound"):  # the budget's bound needs 30 texts or more
        build.calibrate(trained, dev, tmp_path / "cal", unsupervised=True)
    seen: dict[str, tuple[int, int]] = {}
    r = build.calibrate(
        trained,
        dev,
        tmp_path / "cal",
        target="ort-cpu",
        unsupervised=True,
        latency_texts=3,
        confidence=None,
        progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)),
    )
    assert len(r["segment_latency_ms"]) == 2 and all(t > 0 for t in r["segment_latency_ms"])
    assert list(seen)[:3] == ["exit outputs on the dev texts", "latency on ort-cpu", "scoring operating points"]
    assert all(done == total > 0 for done, total in seen.values())  # every stage ran to its end
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert {p["policy"] for p in doc["points"]} == {"entropy", "margin", "patience", "learned", "similarity"}
    assert (tmp_path / "cal" / "calibration.png").stat().st_size > 5000
    check = doc["deployed_check"]  # a chosen point is exported, compiled and timed as deployed before it is kept
    if doc["chosen"] is None:  # no policy beat the single graph on this tiny model: calibration says what to do instead
        assert doc["recommendation"] in ("prune", "none") and doc["message"]
        assert check is None or (not check["kept"] and "as deployed on ort-cpu" in doc["message"])
    else:
        assert doc["chosen"]["quality"] >= doc["base_quality"] - 0.01
        assert doc["chosen"]["expected_latency_ms"] < doc["single_graph_latency_ms"]
        assert check["kept"] and check["ratio"] <= 1 - MIN_SAVING and check["texts"] >= 3 and check["exit_ms"] > 0
    if check is not None:
        assert "the chosen point as deployed on ort-cpu" in seen


def test_artifact_from_another_runtime_version_is_refused(trained, texts, tmp_path, monkeypatch):
    model = load_exits(trained)
    export_segments(model, make("entropy", 0.5), tmp_path / "onnx")
    compile_exits(tmp_path / "onnx", "ort-cpu", tmp_path / "ort")
    import edgekit.deps

    monkeypatch.setattr(edgekit.deps, "version_of", lambda name: "0.0.1" if name == "onnxruntime" else None)
    with pytest.raises(TargetError, match="built with onnxruntime"):
        Predictor(tmp_path / "ort").__enter__()
    assert artifact.read_manifest(tmp_path / "ort").exits.policy == "entropy"

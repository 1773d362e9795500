"""eval: metric arithmetic on controlled inputs, and the artifact's scores against torch's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.build.load import torch_reference
from edgekit.deploy import artifact
from edgekit.deploy.eval import evaluate, f1_scores, retrieval
from edgekit.errors import DataError


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")

    def get(name: str, target: str = "ort-cpu"):
        src = exported(name)
        out = root / name / target
        if not out.exists():
            compile_artifact(src, artifact.read_manifest(src), target, out)
        return out

    return get


def test_f1_scores():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert f1_scores(y_true, y_pred, 3) == pytest.approx([0.5, 0.8, 0.0])


def test_retrieval_metrics():
    q = np.eye(3)
    docs = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # query 0 finds its doc first; 1 and 2 rank it second
    m = retrieval(q, docs, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_classifier_accuracy_is_the_artifacts(compiled, encoders, texts, tmp_path):
    art = compiled("bert-classifier")
    enc = encoders("bert-classifier")
    torch_pred = enc.run(enc.tokenize(texts)).argmax(-1)
    labels = ["negative", "neutral", "positive"]
    # Label the first three as torch predicts and the rest wrongly: accuracy must be 3/5.
    gold = [labels[p] for p in torch_pred[:3]] + [labels[(p + 1) % 3] for p in torch_pred[3:]]
    f = tmp_path / "dev.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(texts, gold)))
    r = evaluate(art, f, reference=torch_reference)
    assert r.n == 5 and r.metrics["accuracy"] == pytest.approx(0.6)
    assert r.metrics["torch_argmax_agreement"] == 1.0
    assert 0 <= r.metrics["macro_f1"] <= 1 and set(r.per_class_f1) == set(labels)


def test_embedding_pairs_and_fidelity(compiled, tmp_path):
    art = compiled("bert-embedding", "openvino-cpu")
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        "".join(json.dumps({"query": f"query {i} about loops", "doc": f"document {i}: loops repeat statements"}) + "\n" for i in range(6))
    )
    r = evaluate(art, f, reference=torch_reference)
    assert r.data_kind == "pairs" and r.n == 12
    assert {"recall@1", "recall@10", "mrr"} <= set(r.metrics)
    assert r.metrics["recall@10"] == 1.0  # only 6 docs
    assert r.metrics["fidelity_cosine_min"] > 0.9999


def test_fidelity_skipped_when_source_changed(compiled, checkpoints, tmp_path):
    import shutil

    from edgekit.build.compile import compile_artifact as comp
    from edgekit.build.export import export

    src = shutil.copytree(checkpoints["distilbert-embedding"], tmp_path / "ckpt")
    onnx = tmp_path / "onnx"
    export(src, onnx)
    art = tmp_path / "ort"
    comp(onnx, artifact.read_manifest(onnx), "ort-cpu", art)
    (src / "config.json").write_text((src / "config.json").read_text().replace("}", ', "edited": true}', 1))
    f = tmp_path / "t.txt"
    f.write_text("one sentence here.\nanother one.\n")
    r = evaluate(art, f, reference=torch_reference)
    assert "fidelity_cosine_min" not in r.metrics
    assert any("changed since the artifact was built" in n for n in r.notes)


def test_classifier_needs_labels(compiled, tmp_path):
    f = tmp_path / "nolabels.jsonl"
    f.write_text(json.dumps({"text": "no label here"}) + "\n")
    with pytest.raises(DataError, match="'label'"):
        evaluate(compiled("roberta-classifier"), f)


def test_unknown_label_is_named(compiled, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("text,label\nfine text,positive\nother,joyful\n")
    with pytest.raises(DataError, match=r"bad.csv:3: label 'joyful'"):
        evaluate(compiled("bert-classifier"), f)

"""openvino-cpu sequence buckets and ort-cpu runtime tuning options (edgekit/targets/openvino.py, ort.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, data
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.shapes import pick_bucket, used_length
from edgekit.errors import ConfigError

pytest.importorskip("openvino")


@pytest.mark.openvino
def test_buckets_pick_the_smallest_that_fits(exported, tmp_path, texts):
    src = exported("bert-embedding")  # max_length 64
    manifest = compile_artifact(
        src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "ov", options={"tune": "off", "seq_lens": "16,64"}
    )
    assert manifest.settings["buckets"] == [16, 64] and manifest.settings["bucket_source"] == "option seq_lens"
    assert manifest.parity.passed  # parity ran through the buckets
    with Predictor(tmp_path / "ov") as pred:
        short = pred.tokenizer(["Yes."])
        pred.run(short)
        assert pred.session.last_bucket == 16
        pred.run(pred.tokenizer([texts[-1]]))
        assert pred.session.last_bucket == 64
        assert pred.predict(texts).shape == (len(texts), 32)
        # single inputs run on [1, s] models compiled up front; batches on [-1, s] models compiled on first use
        session = pred.session
        assert {s: str(c.inputs[0].get_partial_shape()) for s, (c, _) in session._single.items()} == {16: "[1,16]", 64: "[1,64]"}
        session._batched.clear()  # predict above ran batches
        rows = pred.tokenizer(texts[:3])
        bucket = pick_bucket(used_length(rows, 0), [16, 64])
        together = pred.run(rows)
        assert list(session._batched) == [bucket]
        assert str(session._batched[bucket][0].inputs[0].get_partial_shape()) == f"[?,{bucket}]"
        one_by_one = np.concatenate([pred.run(pred.tokenizer([t])) for t in texts[:3]])
        np.testing.assert_allclose(together, one_by_one, atol=1e-4)


@pytest.mark.openvino
def test_buckets_from_data_and_bad_options(exported, static_bert_onnx, tmp_path):
    src = exported("bert-embedding")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data.sample_texts()[:200]) + "\n")
    manifest = compile_artifact(
        src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "ov", options={"tune": "off", "data": str(texts)}
    )
    assert (
        manifest.settings["buckets"][-1] <= 64
        and "pad the 200 texts" in manifest.settings["bucket_source"]
        and len(manifest.settings["buckets"]) <= 8
    )
    with pytest.raises(ConfigError, match="not both"):
        compile_artifact(
            src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "x", options={"tune": "off", "seq_lens": "16", "data": str(texts)}
        )
    # buckets shorter than some parity texts: those run on the dynamic-shape model
    manifest = compile_artifact(
        src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "short", options={"tune": "off", "seq_lens": "8"}
    )
    assert manifest.parity.passed
    with Predictor(tmp_path / "short") as pred:
        pred.run(pred.tokenizer([" ".join(data.sample_texts()[:5])]))
        assert pred.session.last_bucket is None
    with pytest.raises(ConfigError, match="static shape"):
        compile_artifact(
            static_bert_onnx, artifact.read_manifest(static_bert_onnx), "openvino-cpu", tmp_path / "x", options={"seq_lens": "16"}
        )
    with pytest.raises(ConfigError, match="max_buckets picks the lengths from data"):
        compile_artifact(src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "x", options={"seq_lens": "16", "max_buckets": "2"})
    with pytest.raises(ConfigError, match="max_buckets picks that many lengths from data: add data=FILE"):
        compile_artifact(src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "x", options={"max_buckets": "2"})
    assert not (tmp_path / "x").exists()
    manifest = compile_artifact(
        src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "two", options={"tune": "off", "data": str(texts), "max_buckets": "2"}
    )
    assert len(manifest.settings["buckets"]) <= 2 and "max_buckets=2" in manifest.settings["bucket_source"]
    # NNCF PTQ is a build step (edgekit.build.ptq.quantize_nncf), not a target option
    for gone in ("int8", "calibration", "samples", "buckets", "buckets_from"):
        with pytest.raises(ConfigError, match=f"target openvino-cpu: option {gone}: Extra inputs are not permitted"):
            compile_artifact(src, artifact.read_manifest(src), "openvino-cpu", tmp_path / "x", options={gone: "1"})


def test_ort_tuning_options_recorded(exported, tmp_path):
    src = exported("distilbert-classifier")
    manifest = compile_artifact(
        src, artifact.read_manifest(src), "ort-cpu", tmp_path / "ort", options={"spinning": "false", "threads": "1"}
    )
    assert manifest.settings["spinning"] is False and manifest.settings["threads"] == 1
    with Predictor(tmp_path / "ort") as pred:
        assert pred.predict(["a short text"]).shape == (1, 3)

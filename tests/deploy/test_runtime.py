"""edgekit.deploy.runtime: Predictor opens an artifact and runs it on text, without torch."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.deploy.runtime import Predictor, target_for
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.errors import ArtifactError, ConfigError


def test_onnx_artifact_runs_on_onnxruntime(bert_onnx, encoders, texts):
    with Predictor(bert_onnx) as predictor:
        assert isinstance(predictor.target, OrtCpuTarget)
        assert isinstance(target_for(predictor.manifest), OrtCpuTarget)
        assert predictor.output == "embeddings" and predictor.static_batch is None
        got = predictor.predict(texts)
        in_pairs = predictor.predict(texts, batch=2)
    encoder = encoders("bert-embedding")
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)
    np.testing.assert_allclose(in_pairs, got, atol=1e-5)
    assert predictor.session is None  # closed on exit


def test_static_batch_pads_the_last_chunk(static_bert_onnx, encoders, texts):
    encoder = encoders("bert-embedding")
    with Predictor(static_bert_onnx) as predictor:
        assert predictor.static_batch == 2
        got = predictor.predict(texts[:3])
        predictor.check_batch(2)
        with pytest.raises(ConfigError, match=r"static shape \[2, 16\], cannot run batch 3"):
            predictor.check_batch(3)
    assert got.shape == (3, 32)
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts[:3], pad_to=16)), atol=1e-4)


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        Predictor(tmp_path / "nope")

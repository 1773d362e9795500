"""edgekit.build.load: a checkpoint -> Encoder whose module computes what gets exported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import HIDDEN, LABELS

from edgekit.build.load import load
from edgekit.errors import CheckpointError


def test_run_gives_one_row_per_text(encoders, checkpoint_name, texts):
    encoder = encoders(checkpoint_name)
    out = encoder.run(encoder.tokenize(texts))
    width = len(LABELS) if checkpoint_name.endswith("classifier") else HIDDEN
    assert out.shape == (len(texts), width)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert encoder.output_name == ("logits" if checkpoint_name.endswith("classifier") else "embeddings")


def test_tokenize_names_the_spec_inputs_and_uses_int64(encoders, checkpoint_name, texts):
    encoder = encoders(checkpoint_name)
    feed = encoder.tokenize(texts)
    assert tuple(feed) == encoder.spec.input_names
    assert ("token_type_ids" in feed) == checkpoint_name.startswith("bert")
    assert all(v.dtype == np.int64 for v in feed.values())
    # The longest text is cut at the model's max length.
    assert feed["input_ids"].shape[1] == encoder.info.max_length


def test_rows_do_not_depend_on_padding(encoders, checkpoint_name, texts):
    encoder = encoders(checkpoint_name)
    batched = encoder.run(encoder.tokenize(texts))
    alone = np.concatenate([encoder.run(encoder.tokenize([t])) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def _hf_hidden(path, feed):
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding"])
def test_mean_pooling_matches_a_manual_computation(encoders, checkpoints, texts, name):
    encoder = encoders(name)
    assert encoder.info.pooling == "mean"
    feed = encoder.tokenize(texts)
    hidden = _hf_hidden(checkpoints[name], feed)
    mask = feed["attention_mask"][..., None].astype(np.float32)
    expected = (hidden * mask).sum(1) / mask.sum(1)
    unmasked = hidden.mean(1)
    if encoder.info.normalize:
        expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
        unmasked /= np.linalg.norm(unmasked, axis=-1, keepdims=True)
    got = encoder.run(feed)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Padding must not count: the plain mean over all positions differs on padded rows.
    assert not np.allclose(got, unmasked, atol=1e-3)


def test_normalized_embeddings_have_unit_norm(encoders, texts):
    encoder = encoders("bert-embedding")
    assert encoder.info.normalize
    np.testing.assert_allclose(np.linalg.norm(encoder.run(encoder.tokenize(texts)), axis=-1), 1.0, atol=1e-5)


def test_cls_pooling_takes_the_first_token(encoders, checkpoints, texts):
    encoder = encoders("roberta-embedding")
    assert (encoder.info.pooling, encoder.info.normalize) == ("cls", False)
    feed = encoder.tokenize(texts)
    np.testing.assert_allclose(encoder.run(feed), _hf_hidden(checkpoints["roberta-embedding"], feed)[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", ["bert-classifier", "roberta-classifier", "distilbert-classifier"])
def test_classifier_logits_match_the_hf_model(encoders, checkpoints, texts, name):
    encoder = encoders(name)
    feed = encoder.tokenize(texts)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints[name]).eval()
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    np.testing.assert_allclose(encoder.run(feed), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["bert-embedding", "roberta-classifier", "distilbert-classifier"])
def test_config_that_does_not_match_the_weights(copy_checkpoint, name):
    path = copy_checkpoint(name)
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_layers" if name.startswith("distilbert") else "num_hidden_layers"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"16 weights missing from the checkpoint \(e\.g\. .*layer\.2\.") as err:
        load(path)
    assert "config.json" in err.value.hint


def test_config_with_other_tensor_sizes_than_the_weights(copy_checkpoint):
    path = copy_checkpoint("bert-classifier")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="other shapes than config.json says"):
        load(path)


def test_size_mismatch_error_names_the_tensor(copy_checkpoint):
    path = copy_checkpoint("bert-classifier")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"(intermediate|output)\.dense\.\w+: checkpoint \([^)]*64[^)]*\) vs config \([^)]*48"):
        load(path)


def test_load_of_a_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load(tmp_path / "missing")

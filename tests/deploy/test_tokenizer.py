"""edgekit.deploy.tokenizer: the deploy-side tokenizer (tokenizers only) equals the transformers one."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.deploy import artifact
from edgekit.deploy.tokenizer import Tokenizer
from edgekit.errors import ArtifactError

# One artifact per architecture; the mix of tasks does not matter to the tokenizer.
ARTIFACTS = ("bert-embedding", "roberta-classifier", "distilbert-embedding")
ODD_TEXTS = ["Ünïcödé CAFÉ naïve — “quotes” and émojis 😀", "  leading and trailing spaces  ", "tabs\tand\nnewlines", "x"]


@pytest.fixture(params=ARTIFACTS)
def name(request) -> str:
    return request.param


@pytest.fixture
def deploy(exported, name) -> Tokenizer:
    path = exported(name)
    return Tokenizer(path, artifact.read_manifest(path))


def _assert_same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == np.int64, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_matches_transformers_padded_to_longest(deploy, encoders, name, texts):
    batch = [*texts, *ODD_TEXTS]
    got = deploy(batch)
    _assert_same(got, encoders(name).tokenize(batch))
    assert tuple(got) == encoders(name).spec.input_names


def test_truncates_at_max_length(deploy, encoders, name, texts):
    encoder = encoders(name)
    long_text = texts[-1]
    got = deploy([long_text, "short"])
    _assert_same(got, encoder.tokenize([long_text, "short"]))
    assert got["input_ids"].shape == (2, deploy.max_length)
    assert deploy.max_length == encoder.info.max_length
    # The special tokens survive truncation: the row still ends with [SEP] / </s>.
    assert got["input_ids"][0, -1] == encoder.tokenizer.sep_token_id
    assert deploy.lengths([long_text, "short"]) == [deploy.max_length, int(got["attention_mask"][1].sum())]


@pytest.mark.parametrize("pad_to", [8, 16, 40])
def test_pads_to_a_fixed_length(deploy, encoders, name, texts, pad_to):
    batch = [*texts, *ODD_TEXTS]
    got = deploy(batch, pad_to=pad_to)
    _assert_same(got, encoders(name).tokenize(batch, pad_to=pad_to))
    assert got["input_ids"].shape == (len(batch), pad_to)
    short = int(got["attention_mask"][batch.index("x")].sum())
    assert (got["input_ids"][batch.index("x"), short:] == encoders(name).tokenizer.pad_token_id).all()


def test_static_artifact_always_pads_to_its_sequence(encoders, tmp_path):
    from edgekit.build.export import ExportOptions, export

    manifest = export(encoders("roberta-embedding"), tmp_path / "static", ExportOptions(static_shape=(1, 12)))
    tok = Tokenizer(tmp_path / "static", manifest)
    got = tok(["Yes.", "A much longer sentence that will certainly need more than twelve tokens to encode"])
    _assert_same(
        got,
        encoders("roberta-embedding").tokenize(
            ["Yes.", "A much longer sentence that will certainly need more than twelve tokens to encode"], pad_to=12
        ),
    )
    assert got["input_ids"].shape == (2, 12)


def test_missing_tokenizer_json(exported, tmp_path):
    import shutil

    path = shutil.copytree(exported("bert-embedding"), tmp_path / "art")
    (path / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json missing"):
        Tokenizer(path, artifact.read_manifest(path, verify=False))


def test_counts_the_texts_cut_to_the_limit(deploy, texts):
    lengths_uncut = [len(e.ids) for e in deploy._tok.encode_batch(texts)]
    assert deploy.count_truncated(texts) == sum(n > deploy.limit for n in lengths_uncut) == 1  # the fixture's long text
    assert deploy.truncation_note(texts[:-1]) is None
    assert deploy.truncation_note(texts).startswith(f"1 of {len(texts)} texts are longer than the artifact's limit of {deploy.limit}")
    assert deploy.lengths(texts)[-1] == deploy.limit  # still truncated when run

"""``edgekit quantize --unlabeled FILE --augment N``: a run on the tiny checkpoints, and every bad
input as one line, exit code 2, nothing written at OUT."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import quantize_args
from test_cli import assert_user_error, no_partials, run_cli

from edgekit.deploy import data


def word_level_tokenizer(vocab: dict[str, int] | None = None):
    """A BPE tokenizer without word-start markers (Whitespace pre-tokenizer): no word vocabulary."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = vocab or {t: i for i, t in enumerate([*specials, "ab", "cd", "abcd", "ef"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


@pytest.fixture
def train_file(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("\n".join(data.sample_texts()[:16]) + "\n")
    return p


def _quantize(model, data, out, cache, *extra):
    return quantize_args(model, data, out, cache, "ternary-w2a8", *extra)


def test_quantize_with_unlabeled_text_and_augmentation(checkpoints, train_file, tmp_path, monkeypatch, capsys):
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"text": t}) + "\n" for t in data.sample_texts()[200:230]))
    out = tmp_path / "q"
    args = _quantize(checkpoints["bert-embedding"], train_file, out, tmp_path / "cache", "--unlabeled", str(more), "--augment", "2")
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    corpus = json.loads((out / "quant_report.json").read_text())["stages"][0]["corpus"]
    assert (corpus["train"], corpus["labeled"], corpus["unlabeled"]) == (16, 0, 30)
    assert corpus["augmented"] > 16 and corpus["augmentation"]["copies"] == 2 and "augmentation:" in stdout
    assert not list(out.glob("augmented-*"))  # the generated corpus is not part of the checkpoint


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ("no such unlabeled data file",)),
        ("directory", ("is a directory",)),
        ("empty", ("no text",)),
        ("blank", ("no text",)),
        ("latin1", ("not UTF-8 text (byte 3, line 1",)),
    ],
)
def test_quantize_refuses_a_bad_unlabeled_file(case, fragments, train_file, tmp_path, monkeypatch, capsys):
    path = tmp_path / "u.txt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "blank":
        path.write_text("\n   \n\n")
    elif case == "latin1":
        path.write_bytes("caf\u00e9s\nna\u00efve text\n".encode("latin-1"))
    args = _quantize("default", train_file, tmp_path / "q", tmp_path / "cache", "--unlabeled", str(path))
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, str(path), *fragments)
    assert not (tmp_path / "q").exists() and not (tmp_path / "cache").exists() and no_partials(tmp_path)


@pytest.mark.parametrize("value", ["-1", "51", "1000"])
def test_quantize_refuses_an_absurd_augment(value, train_file, tmp_path, monkeypatch, capsys):
    args = _quantize("default", train_file, tmp_path / "q", tmp_path / "cache", "--augment", value)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, "augment")
    assert not (tmp_path / "q").exists() and not (tmp_path / "cache").exists()


def test_quantize_refuses_an_unknown_augment_method(train_file, tmp_path, monkeypatch, capsys):
    args = _quantize("default", train_file, tmp_path / "q", tmp_path / "cache", "--augment", "2", "--augment-method", "shuffle")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, "augment_method")
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_augment_on_a_tokenizer_without_word_vocabulary(checkpoints, train_file, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(checkpoints["distilbert-embedding"], model)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / f).unlink(missing_ok=True)
    vocab = json.loads((checkpoints["distilbert-embedding"] / "tokenizer.json").read_text())["model"]["vocab"]
    word_level_tokenizer(vocab).save_pretrained(model)  # the model's vocabulary, so it loads as this model's tokenizer
    args = _quantize(model, train_file, tmp_path / "q", tmp_path / "cache", "--augment", "2")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, "no word vocabulary")
    assert not (tmp_path / "q").exists() and no_partials(tmp_path)

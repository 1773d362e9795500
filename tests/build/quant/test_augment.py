"""edgekit.build.quant.augment: the unlabeled corpus reader, embedding-neighbour word replacement,
span masking, determinism and the corpus cache; and QAT on the union of the texts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_cli_augment import word_level_tokenizer

from edgekit.build.quant import augment
from edgekit.build.quant.layout import hf_model_of
from edgekit.build.quant.train import TrainOptions, run
from edgekit.deploy import data
from edgekit.errors import ConfigError, DataError

TEXTS = data.sample_texts()[:24]


def _embedding(encoder):
    return hf_model_of(encoder.module).get_input_embeddings().weight


def _cores(text: str) -> list[str | None]:
    return [(m.group(2) if (m := re.match(r"^(\W*)([^\W\d_]+)(\W*)$", w)) else None) for w in text.split()]


# ----------------------------------------------------------------------------- the word table and neighbours


@pytest.mark.parametrize("name, kind", [("bert-classifier", "wordpiece"), ("roberta-classifier", "byte-level")])
def test_word_table_holds_whole_words_only(encoders, name, kind):
    tok = encoders(name).tokenizer
    table = augment.word_table(tok)
    assert table.kind == kind and len(table.words) > 50
    vocab = tok.get_vocab()
    special = set(tok.all_special_ids)
    marker = "\u0120" if kind == "byte-level" else ""
    for word, i in zip(table.words, table.ids):
        assert word.isalpha() and len(word) >= 2 and not word.startswith("##") and i not in special
        assert vocab[marker + word] == i
    # each is one token of the tokenizer, as a word of its own
    for word in table.words[::25]:
        assert len(tok(f"x {word}", add_special_tokens=False)["input_ids"]) == 2 - (word == "x")


def test_word_table_refuses_a_tokenizer_without_word_markers():
    with pytest.raises(ConfigError, match="no word vocabulary"):
        augment.word_table(word_level_tokenizer())


def test_neighbours_are_the_nearest_by_cosine_in_the_embedding_matrix(encoders):
    enc = encoders("bert-classifier")
    table = augment.word_table(enc.tokenizer)
    emb = _embedding(enc).detach().float()
    which = [0, 7, 100, len(table.ids) - 1]
    got = augment.nearest(emb, table, which, k=5)
    rows = torch.nn.functional.normalize(emb[list(table.ids)], dim=-1)
    for i in which:
        sims = (rows @ rows[i]).tolist()
        sims[i] = float("-inf")
        assert i not in got[i] and len(got[i]) == 5
        chosen = [sims[j] for j in got[i]]
        assert chosen == sorted(chosen, reverse=True)  # nearest first
        rest = max(s for j, s in enumerate(sims) if j not in got[i])
        assert min(chosen) >= rest  # none left out is nearer than one chosen
    # a different embedding matrix gives other neighbours (they come from the model, not the spelling)
    other = augment.nearest(torch.randn_like(emb), table, which, k=5)
    assert other != got


# ----------------------------------------------------------------------------- augmentation


def test_replacement_changes_only_whole_words_into_neighbours(encoders):
    enc = encoders("bert-classifier")
    table = augment.word_table(enc.tokenizer)
    index = table.index()
    emb = _embedding(enc)
    neighbours = augment.nearest(emb, table, range(len(table.ids)))
    changed = replaced = 0
    for src in TEXTS[:10]:
        out, stats = augment.augment_texts([src], enc.tokenizer, emb, 3, seed=1, method="replace")
        assert stats["masked_spans"] == 0 and "[MASK]" not in " ".join(out)
        replaced += stats["replaced_words"]
        for copy in out:
            assert len(copy.split()) == len(src.split())
            for before, after, core_b, core_a in zip(src.split(), copy.split(), _cores(src), _cores(copy)):
                if before == after:
                    continue
                changed += 1
                assert core_b is not None and core_a is not None, (before, after)
                assert core_a.lower() in index and not core_a.startswith("##")  # a whole word of the vocabulary
                assert index[core_a.lower()] in neighbours[index[core_b.lower()]]  # one of the word's 15 neighbours
                assert before.replace(core_b, "", 1) == after.replace(core_a, "", 1)  # punctuation around it kept
                assert core_a[0].isupper() == core_b[0].isupper()  # capitalisation kept
    assert changed > 20 and changed <= replaced  # (a word may be replaced by its own spelling in another case: not a change)


def test_span_masking_uses_the_mask_token(encoders):
    enc = encoders("distilbert-classifier")
    out, stats = augment.augment_texts(TEXTS, enc.tokenizer, _embedding(enc), 2, seed=0, method="mask")
    assert stats["mask_token"] == "[MASK]" and stats["replaced_words"] == 0
    for copy in out:
        masked = [w for w in copy.split() if w == "[MASK]"]
        assert 1 <= len(masked) <= 3
    both, stats = augment.augment_texts(TEXTS, enc.tokenizer, _embedding(enc), 2, seed=0, method="both")
    assert stats["masked_spans"] == len(TEXTS) and stats["replaced_words"] > 0  # every other copy masked


def test_augmentation_is_seeded(encoders):
    enc = encoders("roberta-classifier")
    a, _ = augment.augment_texts(TEXTS, enc.tokenizer, _embedding(enc), 4, seed=3)
    b, _ = augment.augment_texts(TEXTS, enc.tokenizer, _embedding(enc), 4, seed=3)
    c, _ = augment.augment_texts(TEXTS, enc.tokenizer, _embedding(enc), 4, seed=4)
    assert a == b and a != c
    assert len(set(a)) == len(a) and not set(a) & set(TEXTS)  # duplicates and unchanged copies dropped


def test_the_corpus_is_cached_byte_for_byte(encoders, tmp_path, monkeypatch):
    enc = encoders("bert-classifier")
    emb = _embedding(enc)
    out, info = augment.augmented_corpus(TEXTS, enc.tokenizer, emb, 2, cache_dir=tmp_path / "c1", seed=5)
    again, _ = augment.augmented_corpus(TEXTS, enc.tokenizer, emb, 2, cache_dir=tmp_path / "c2", seed=5)
    first = Path(info["file"]).read_bytes()
    assert not info["cached"] and (tmp_path / "c2" / Path(info["file"]).name).read_bytes() == first  # same inputs, same bytes
    assert again == out and [json.loads(line)["text"] for line in first.decode().splitlines()[1:]] == out

    def must_not_run(*a, **k):
        raise AssertionError("a cache hit recomputed the corpus")

    monkeypatch.setattr(augment, "augment_texts", must_not_run)
    hit, hit_info = augment.augmented_corpus(TEXTS, enc.tokenizer, emb, 2, cache_dir=tmp_path / "c1", seed=5)
    assert hit == out and hit_info["cached"] and hit_info["sha256"] == info["sha256"]
    assert Path(info["file"]).read_bytes() == first
    # another seed, count, method, text set or embedding matrix is another key
    keys = {
        augment.cache_key(TEXTS, enc.tokenizer, emb, 2, 5, "both"),
        augment.cache_key(TEXTS, enc.tokenizer, emb, 2, 6, "both"),
        augment.cache_key(TEXTS, enc.tokenizer, emb, 3, 5, "both"),
        augment.cache_key(TEXTS, enc.tokenizer, emb, 2, 5, "replace"),
        augment.cache_key(TEXTS[1:], enc.tokenizer, emb, 2, 5, "both"),
        augment.cache_key(TEXTS, enc.tokenizer, emb * 2, 2, 5, "both"),
    }
    assert len(keys) == 6
    # a damaged file is not trusted: regenerated (here: the generator is patched out, so it raises)
    Path(info["file"]).write_text(first.decode()[:-40], encoding="utf-8")
    with pytest.raises(AssertionError, match="recomputed"):
        augment.augmented_corpus(TEXTS, enc.tokenizer, emb, 2, cache_dir=tmp_path / "c1", seed=5)


# ----------------------------------------------------------------------------- the unlabeled corpus


def test_read_unlabeled(tmp_path):
    txt = tmp_path / "u.txt"
    txt.write_text("\ufefffirst text\n\n  second text  \n", encoding="utf-8")
    assert augment.read_unlabeled(txt) == ["first text", "second text"]
    jl = tmp_path / "u.jsonl"
    jl.write_text(json.dumps({"text": "a", "label": "whatever"}) + "\n" + json.dumps({"text": "b", "label": "x"}) + "\n")
    assert augment.read_unlabeled(jl) == ["a", "b"]  # labels ignored, even unknown ones
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"query": "q", "doc": "d"}) + "\n")
    assert augment.read_unlabeled(pairs) == ["q", "d"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nabc\xff\xfe more\n")
    cases = [
        (tmp_path / "missing.txt", "no such unlabeled data file"),
        (tmp_path, "is a directory"),
        (bad, "not UTF-8 text (byte 13, line 2"),
    ]
    for empty in ("", "\n  \n\t\n"):
        p = tmp_path / f"empty{len(empty)}.txt"
        p.write_text(empty)
        cases.append((p, "no text"))
    for path, message in cases:
        with pytest.raises(DataError) as err:
            augment.read_unlabeled(path)
        assert message in err.value.message and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- training on the union


def test_qat_distils_on_unlabeled_and_augmented_text(checkpoints, tmp_path):
    labeled = tmp_path / "train.jsonl"
    labeled.write_text(
        "".join(json.dumps({"text": t, "label": ["negative", "neutral", "positive"][i % 3]}) + "\n" for i, t in enumerate(TEXTS[:12]))
    )
    unlabeled = tmp_path / "more.txt"
    unlabeled.write_text("\n".join(data.sample_texts()[100:140]) + "\n")
    opts = TrainOptions(
        model=str(checkpoints["bert-classifier"]),
        data=str(labeled),
        out=str(tmp_path / "out"),
        scheme="bit-w1a1",
        multi_step=True,
        steps=6,
        batch_size=8,
        max_length=32,
        progress=False,
        calib_batches=1,
        ce=1.0,  # label loss on the 12 labeled rows only; batches of unlabeled rows alone have none (no NaN)
        unlabeled=str(unlabeled),
        augment=2,
        augment_cache=str(tmp_path / "aug"),
    )
    report = run(opts)
    for stage in report.stages:
        c = stage.corpus
        assert (c.train, c.labeled, c.unlabeled) == (12, 12, 40)
        assert 12 < c.augmented <= 24 and c.total == 52 + c.augmented
        assert c.augmentation.copies == 2 and c.augmentation.method == "both" and Path(c.augmentation.file).parent == tmp_path / "aug"
        assert stage.loss_last is not None
    saved = json.loads((tmp_path / "out" / "quant_report.json").read_text())
    assert saved["stages"][-1]["corpus"]["augmentation"]["replace_p"] == 0.4
    assert (
        "corpus"
        not in run(opts.model_copy(update={"unlabeled": None, "augment": 0, "out": str(tmp_path / "plain"), "multi_step": False})).stages[0]
    )


def test_train_options_validate_augment(tmp_path):
    base = dict(model="m", data="d", out=str(tmp_path))
    for bad in (-1, 51):
        with pytest.raises(ConfigError, match="train.augment"):
            TrainOptions(**base, augment=bad)
    with pytest.raises(ConfigError, match="augment_method"):
        TrainOptions.build(**base, augment=2, augment_method="shuffle")

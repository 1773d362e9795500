"""More text for distillation: an unlabeled corpus, and augmented copies of the training texts.

Augmentation (in the spirit of TinyBERT, which TernaryBERT and BiT reuse): for each training text,
``n`` copies, each made by

- **word replacement**: every word (a run of letters between spaces, punctuation kept around it)
  that is one whole-word token of the model's vocabulary is replaced, with probability
  ``REPLACE_P``, by one of its ``NEIGHBOURS`` nearest whole-word tokens by cosine similarity in the
  model's own input-embedding matrix (TinyBERT draws candidates from BERT's masked-LM predictions
  and GloVe; the model's embedding table needs nothing outside the checkpoint). Special tokens and
  sub-word pieces (``##ing``, pieces without the word-start marker) are never candidates, and
  words the tokenizer splits into pieces are left as they are;
- **span masking** (``method`` ``both`` or ``mask``): a span of 1 to 3 words becomes the
  tokenizer's mask token, one per word (skipped where the tokenizer has no mask token).

``both``: every copy gets word replacement, every other copy (the 2nd, 4th, ...) a masked span too.
Copies equal to their text or to an earlier copy are dropped. Each text's copies come from a
random generator seeded by (seed, text index), so the corpus is the same, byte for byte, for the
same texts, vocabulary, embedding matrix, ``n``, seed and method; it is written to
``CACHE/augmented-<key>.jsonl`` (key: sha256 of all of these) and read back on the next run.

Torch is imported only by the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.deploy import data as datafiles
from edgekit.errors import ConfigError, DataError

METHODS = ("both", "replace", "mask")
REPLACE_P = 0.4  # per eligible word (TinyBERT's p_t)
NEIGHBOURS = 15  # candidates per word (TinyBERT's K)
SPAN = (1, 3)  # words per masked span
VERSION = 1  # of the generation procedure (part of the cache key)
_WORD = re.compile(r"^(\W*)([^\W\d_]+)(\W*)$")  # leading punctuation, letters, trailing punctuation


# ----------------------------------------------------------------------------- the unlabeled corpus


def read_unlabeled(path: str | Path) -> list[str]:
    """Texts of an unlabeled corpus: ``.txt`` (one per line), JSONL/CSV with ``text`` (labels, if any,
    are ignored) or ``query``/``doc`` pairs (both sides). One-line :class:`DataError` otherwise."""
    path = Path(path)
    hint = "pass a UTF-8 .txt (one text per line) or .jsonl/.csv with a 'text' field"
    if not path.exists():
        raise DataError(f"{path}: no such unlabeled data file", hint="check the --unlabeled path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an unlabeled data file", hint=hint)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the unlabeled data file ({err.strerror})", hint=hint) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}, line {line}: {err.reason})", hint=hint) from err
    if not text.replace("\ufeff", "").strip():
        raise DataError(f"{path}: no text (the unlabeled data file is empty or blank)", hint=hint)
    kind = datafiles.kind(path)
    if kind == "pairs":
        queries, docs = datafiles.read_pairs(path)
        return queries + docs
    if kind == "labeled" or path.suffix.lower() in (".jsonl", ".json", ".csv"):
        return datafiles.read_texts(path)
    return [line.strip() for line in text.replace("\ufeff", "", 1).splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the word table


@dataclass(frozen=True)
class WordTable:
    """The whole-word tokens of a vocabulary: ``words[i]`` (as written in a text) is token ``ids[i]``."""

    words: tuple[str, ...]
    ids: tuple[int, ...]
    kind: str  # wordpiece | byte-level | sentencepiece | wordlevel
    lowercase: bool

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}


def _normalizer_lowercases(backend) -> bool:
    normalizer = backend.normalizer
    return normalizer is not None and normalizer.normalize_str("AbC") == "abc"


def word_table(tokenizer) -> WordTable:
    """The whole-word tokens of ``tokenizer`` (a fast tokenizer): words of two letters or more, not special.

    WordPiece: tokens without the continuing-subword prefix (``##``); byte-level BPE: tokens with
    the word-start marker ``Ġ`` and ASCII letters (other bytes are remapped to other characters there); SentencePiece: tokens with ``▁``; WordLevel: every token.
    Words of one letter are left out (as replacements they are mostly noise). A tokenizer whose tokens
    do not say where words start has no word vocabulary: ConfigError."""
    hint = "augmentation needs a WordPiece, byte-level BPE, SentencePiece or word-level tokenizer (tokenizer.json); use --augment 0"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("--augment: the tokenizer has no vocabulary file edgekit can read (not a fast tokenizer)", hint=hint)
    model = json.loads(backend.to_str()).get("model", {})
    kind, pre = model.get("type"), json.dumps(json.loads(backend.to_str()).get("pre_tokenizer"))
    if kind == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        marker, name = "", "wordpiece"
        keep = lambda tok: not tok.startswith(prefix)  # noqa: E731
    elif kind in ("BPE", "Unigram") and '"ByteLevel"' in pre:
        marker, name = "\u0120", "byte-level"  # the byte-level alphabet writes a space as U+0120
        keep = lambda tok: tok.startswith(marker) and tok[1:].isascii()  # noqa: E731 - other bytes are remapped characters
    elif kind in ("BPE", "Unigram") and '"Metaspace"' in pre:
        marker, name = "\u2581", "sentencepiece"
        keep = lambda tok: tok.startswith(marker)  # noqa: E731
    elif kind == "WordLevel":
        marker, name = "", "wordlevel"
        keep = lambda tok: True  # noqa: E731
    else:
        raise ConfigError(
            f"--augment: the tokenizer ({kind} model) has no word vocabulary: its tokens do not mark where words start", hint=hint
        )
    special = set(tokenizer.all_special_ids)
    pairs = sorted(
        (tok[len(marker) :], i)
        for tok, i in tokenizer.get_vocab().items()
        if i not in special and keep(tok) and tok[len(marker) :].isalpha() and len(tok) - len(marker) >= 2
    )
    if len(pairs) < 2:
        raise ConfigError("--augment: the tokenizer's vocabulary has no whole-word tokens to draw replacements from", hint=hint)
    words, ids = zip(*pairs)
    return WordTable(words=tuple(words), ids=tuple(ids), kind=name, lowercase=_normalizer_lowercases(backend))


def nearest(embedding, table: WordTable, which: Sequence[int], k: int = NEIGHBOURS, chunk: int = 1024) -> dict[int, list[int]]:
    """For each table index in ``which``: the ``k`` other table indices nearest by cosine similarity of
    their rows in ``embedding`` (a V x D tensor), nearest first. Computed in float32 on the CPU."""
    import torch

    rows = embedding.detach().to("cpu", torch.float32)[list(table.ids)]
    unit = torch.nn.functional.normalize(rows, dim=-1)
    k = min(k, len(table.ids) - 1)
    out: dict[int, list[int]] = {}
    which = sorted(set(which))
    for c in range(0, len(which), chunk):
        part = which[c : c + chunk]
        sims = unit[part] @ unit.T
        sims[torch.arange(len(part)), torch.tensor(part)] = float("-inf")  # never the word itself
        top = sims.topk(k, dim=-1).indices.tolist()
        out.update(zip(part, top))
    return out


# ----------------------------------------------------------------------------- augmentation


def _case_like(word: str, original: str, lowercase: bool) -> str:
    if not lowercase:
        return word
    if original.isupper() and len(original) > 1:
        return word.upper()
    return word.capitalize() if original[:1].isupper() else word


def _lookup(core: str, table_index: dict[str, int], lowercase: bool) -> int | None:
    return table_index.get(core.lower() if lowercase else core)


@dataclass
class Counts:
    replaced: int = 0
    masked_spans: int = 0
    dropped: int = 0  # copies equal to their text or an earlier copy


def augment_text(
    text: str,
    rng: random.Random,
    copies: int,
    *,
    method: str,
    table: WordTable,
    table_index: dict[str, int],
    neighbours: dict[int, list[int]],
    mask_token: str | None,
    p: float = REPLACE_P,
    counts: Counts | None = None,
) -> list[str]:
    """Up to ``copies`` augmented versions of ``text`` (see the module docstring)."""
    counts = counts if counts is not None else Counts()
    parts = text.split()
    slots = []  # (part index, leading punct, word, trailing punct, table index)
    for i, part in enumerate(parts):
        m = _WORD.match(part)
        if m:
            t = _lookup(m.group(2), table_index, table.lowercase)
            if t is not None and neighbours.get(t):
                slots.append((i, m.group(1), m.group(2), m.group(3), t))
    out: list[str] = []
    seen = {" ".join(parts)}
    for c in range(copies):
        words = list(parts)
        if method in ("both", "replace"):
            for i, lead, word, trail, t in slots:
                if rng.random() < p:
                    new = table.words[rng.choice(neighbours[t])]
                    words[i] = lead + _case_like(new, word, table.lowercase) + trail
                    counts.replaced += 1
        if mask_token and words and (method == "mask" or (method == "both" and c % 2 == 1)):
            span = min(rng.randint(*SPAN), len(words))
            start = rng.randrange(len(words) - span + 1)
            words[start : start + span] = [mask_token] * span
            counts.masked_spans += 1
        copy = " ".join(words)
        if copy in seen:
            counts.dropped += 1
            continue
        seen.add(copy)
        out.append(copy)
    return out


def augment_texts(
    texts: Sequence[str],
    tokenizer,
    embedding,
    copies: int,
    *,
    seed: int = 0,
    method: str = "both",
    p: float = REPLACE_P,
    k: int = NEIGHBOURS,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[str], dict]:
    """(augmented texts, stats): ``copies`` versions of each text of ``texts``, in text order."""
    if method not in METHODS:
        raise ConfigError(f"augment_method: {method!r} is not one of {', '.join(METHODS)}")
    table = word_table(tokenizer)
    index = table.index()
    used = {
        t
        for text in texts
        for part in text.split()
        if (m := _WORD.match(part)) and (t := _lookup(m.group(2), index, table.lowercase)) is not None
    }
    neighbours = nearest(embedding, table, sorted(used), k) if method != "mask" else {}
    mask_token = getattr(tokenizer, "mask_token", None) or None
    if method == "mask" and mask_token is None:
        raise ConfigError("--augment-method mask: the tokenizer has no mask token", hint="use --augment-method replace")
    counts = Counts()
    out: list[str] = []
    for n, text in enumerate(texts):
        rng = random.Random(f"edgekit-augment:{seed}:{n}")  # str seeds hash with sha512: the same on every run and machine
        out += augment_text(
            text,
            rng,
            copies,
            method=method,
            table=table,
            table_index=index,
            neighbours=neighbours,
            mask_token=mask_token,
            p=p,
            counts=counts,
        )
        if advance is not None:
            advance(1)
    stats = {
        "vocabulary": table.kind,
        "whole_words": len(table.words),
        "words_with_neighbours": len(neighbours),
        "mask_token": mask_token if method != "replace" else None,
        "replaced_words": counts.replaced,
        "masked_spans": counts.masked_spans,
        "dropped_duplicates": counts.dropped,
    }
    return out, stats


# ----------------------------------------------------------------------------- the cache


def cache_key(texts: Sequence[str], tokenizer, embedding, copies: int, seed: int, method: str) -> str:
    """sha256 of what the augmented corpus depends on: the texts, the vocabulary, the embedding
    matrix, the number of copies, the seed, the method and its constants."""
    import numpy as np

    h = hashlib.sha256()
    settings = {"version": VERSION, "copies": copies, "seed": seed, "method": method, "p": REPLACE_P, "k": NEIGHBOURS, "span": SPAN}
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(hashlib.sha256("\n".join(texts).encode()).digest())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    h.update(hashlib.sha256(vocab.encode()).digest())
    h.update(str(getattr(tokenizer, "mask_token", None)).encode())
    matrix = np.ascontiguousarray(embedding.detach().to("cpu").float().numpy())
    h.update(str(matrix.shape).encode() + hashlib.sha256(matrix.tobytes()).digest())
    return h.hexdigest()


def _read_cached(path: Path, key: str) -> tuple[list[str], dict] | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0])
        if head.get("key") != key or head.get("texts") != len(lines) - 1:
            return None
        return [json.loads(line)["text"] for line in lines[1:]], head.get("stats", {})
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _write(path: Path, key: str, texts: list[str], stats: dict) -> None:
    head = {"edgekit_augment": VERSION, "key": key, "texts": len(texts), "stats": stats}
    body = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(head, sort_keys=True) + "\n" + body, encoding="utf-8")
    os.replace(tmp, path)  # whole or absent: a reader never sees half a corpus


def augmented_corpus(
    texts: Sequence[str],
    tokenizer,
    embedding,
    copies: int,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    method: str = "both",
    write: bool = True,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[list[str], dict]:
    """The augmented copies of ``texts``, from ``cache_dir/augmented-<key>.jsonl`` when it is there,
    else generated (with a progress bar when ``progress``) and written there (``write``: rank 0).

    Returns (texts, info): info holds the settings, the file, its key, whether it was cached, the seconds."""
    t0 = time.perf_counter()
    key = cache_key(texts, tokenizer, embedding, copies, seed, method)
    path = Path(cache_dir) / f"augmented-{key[:16]}.jsonl"
    cached = _read_cached(path, key)
    if cached is not None:
        out, stats = cached
        hit = True
    else:
        hit = False
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("augmenting x{task.fields[n]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            ) as bar:
                task = bar.add_task("augment", total=len(texts), n=copies)
                out, stats = augment_texts(
                    texts, tokenizer, embedding, copies, seed=seed, method=method, advance=lambda d: bar.advance(task, d)
                )
        else:
            out, stats = augment_texts(texts, tokenizer, embedding, copies, seed=seed, method=method)
        if write:
            _write(path, key, out, stats)
    info = {
        "copies": copies,
        "method": method,
        "replace_p": REPLACE_P if method != "mask" else None,
        "neighbours": NEIGHBOURS if method != "mask" else None,
        "span_words": list(SPAN) if method != "replace" else None,
        "seed": seed,
        "texts": len(out),
        "file": str(path),
        "sha256": key,
        "cached": hit,
        "seconds": round(time.perf_counter() - t0, 2),
        **stats,
    }
    if say is not None:
        state = "cached" if hit else f"generated in {info['seconds']:.1f}s"
        say(f"augmentation: {len(out)} texts from {len(texts)} (x{copies}, {method}, seed {seed}), {state}: {path}")
    return out, info

"""Training and eval texts for QAT: reading the data file, tokenizing batches, scoring a student.

:func:`with_extra_text` adds the distillation-only texts (``unlabeled``, ``augment``) to the
training set: batches are drawn from the union, and those rows carry the label ``IGNORE``, which
the label loss skips (``F.cross_entropy``'s ``ignore_index``), so the distillation losses see
every row and the label loss only the labeled ones."""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.build.load import Encoder
from edgekit.build.quant import augment
from edgekit.build.quant.report import Augmentation, Corpus, EvalResult
from edgekit.deploy import data as datafiles
from edgekit.errors import ConfigError

IGNORE = -100  # the label of a distillation-only row (F.cross_entropy's default ignore_index)


def read_training_data(path: str | Path, encoder: Encoder) -> tuple[list[str], list[int] | None]:
    """Texts (and label ids, for a labeled classifier file); DataError for empty/unreadable files."""
    path = Path(path)
    kind = datafiles.kind(path)
    if kind == "labeled" and encoder.info.task == "classifier":
        labeled = datafiles.read_labeled(path, list(encoder.info.labels or ()))
        return labeled.texts, labeled.labels
    if kind == "pairs":
        queries, docs = datafiles.read_pairs(path)
        return queries + docs, None
    return datafiles.read_texts(path), None


def encode(encoder: Encoder, texts: list[str], device, max_length: int) -> tuple[tuple, torch.Tensor]:
    """(positional model inputs, attention mask) on ``device``."""
    enc = encoder.tokenizer(texts, padding=True, truncation=True, max_length=min(max_length, encoder.info.max_length), return_tensors="pt")
    inputs = tuple(enc[name].to(device) for name in encoder.spec.input_names)
    return inputs, enc["attention_mask"].to(device)


class Tokens:
    """Texts tokenized once (no tokenizer on the training step's path): padded id tensors and lengths.

    ``batch(idx, device)`` gives the positional model inputs and the attention mask of the rows
    ``idx``, cut to their longest text (``pad_to_max``: to the full width, as fixed-shape padding does).
    The tensors live on ``device`` when given (a batch is then an index on the GPU, no host copy).
    """

    def __init__(self, encoder: Encoder, texts: list[str], max_length: int, device=None) -> None:
        width = min(max_length, encoder.info.max_length)
        enc = encoder.tokenizer(texts, padding="max_length", truncation=True, max_length=width, return_tensors="pt")
        self.names = tuple(encoder.spec.input_names)
        self.texts = list(texts)
        self.width = width
        self.extended: tuple | None = None  # (settings, result) of with_extra_text, reused by later stages
        self.lengths = enc["attention_mask"].sum(-1).tolist()
        self.columns = {name: enc[name].to(device) if device is not None else enc[name] for name in {*self.names, "attention_mask"}}

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: list[int], device, *, pad_to_max: bool = False) -> tuple[tuple, torch.Tensor]:
        cut = self.width if pad_to_max else max(self.lengths[i] for i in idx)
        rows = torch.tensor(idx)
        out = {}
        for name, col in self.columns.items():
            t = col.index_select(0, rows.to(col.device))[:, :cut]
            out[name] = t.to(device, non_blocking=True)
        return tuple(out[n] for n in self.names), out["attention_mask"]


def with_extra_text(tokens: Tokens, labels: list[int] | None, student: Encoder, opts, *, main: bool = True, say=None):
    """(tokens, labels, corpus): ``tokens`` with the unlabeled corpus ``opts.unlabeled`` (its first
    ``opts.limit`` texts) and ``opts.augment`` augmented copies of each training text appended;
    their labels are ``IGNORE``. Computed once per ``tokens`` (BiT's second stage reuses it)."""
    settings = (opts.unlabeled, opts.augment, opts.augment_method, opts.seed, opts.limit, augment_dir(opts))
    if tokens.extended is not None and tokens.extended[0] == settings:
        return tokens.extended[1]
    extra: list[str] = []
    unlabeled = augmented = 0
    info = None
    if opts.unlabeled:
        texts = augment.read_unlabeled(opts.unlabeled)
        extra += texts[: opts.limit] if opts.limit else texts
        unlabeled = len(extra)
    if opts.augment:
        from edgekit.build.quant.layout import hf_model_of

        embedding = hf_model_of(student.module).get_input_embeddings().weight
        made, info = augment.augmented_corpus(
            tokens.texts,
            student.tokenizer,
            embedding,
            opts.augment,
            cache_dir=augment_dir(opts),
            seed=opts.seed,
            method=opts.augment_method,
            write=main,
            progress=main and opts.progress and _terminal(),
            say=say if main else None,
        )
        extra += made
        augmented = len(made)
    n_labeled = sum(1 for y in labels if y != IGNORE) if labels is not None else 0
    corpus = Corpus(
        train=len(tokens),
        labeled=n_labeled,
        unlabeled=unlabeled,
        augmented=augmented,
        total=len(tokens) + len(extra),
        unlabeled_file=str(opts.unlabeled) if opts.unlabeled else None,
        augmentation=Augmentation(**info) if info is not None else None,
    )
    if extra:
        device = next(iter(tokens.columns.values())).device
        tokens_out = Tokens(student, tokens.texts + extra, opts.max_length, device)
        labels = labels + [IGNORE] * len(extra) if labels is not None else None
    else:
        tokens_out = tokens
    tokens.extended = (settings, (tokens_out, labels, corpus))
    return tokens_out, labels, corpus


def augment_dir(opts) -> Path:
    """Where the augmented corpora are kept: ``augment_cache``, else ``.edgekit-augment`` beside the
    output directory (outside the checkpoint; shared by the runs that write next to each other)."""
    return Path(opts.augment_cache) if opts.augment_cache else Path(opts.out).resolve().parent / ".edgekit-augment"


def _terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal


def batch_order(
    lengths: list[int], batch: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, buckets: int = 1
) -> list[list[int]]:
    """One epoch's batches of text indices for ``rank`` of ``world``: a seeded shuffle, shared out as
    :class:`~torch.utils.data.DistributedSampler` does, then (``buckets`` > 1) sorted by length within
    chunks of ``buckets`` batches and the batches shuffled, so a batch holds texts of similar length."""
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    per_rank = -(-len(order) // world)
    order += order[: per_rank * world - len(order)]  # pad by repeating, as DistributedSampler does
    mine = order[rank : len(order) : world]
    if buckets <= 1:
        return [mine[i : i + batch] for i in range(0, len(mine), batch)]
    out = []
    chunk = batch * buckets
    for c in range(0, len(mine), chunk):
        part = sorted(mine[c : c + chunk], key=lambda i: lengths[i])
        out += [part[i : i + batch] for i in range(0, len(part), batch)]
    shuffled = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in shuffled]


def check_tokenizers(teacher: Encoder, student: Encoder) -> None:
    """The teacher must tokenize exactly as the student does (same ids for the same text)."""
    a, b = teacher.tokenizer, student.tokenizer
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb or a.pad_token_id != b.pad_token_id or a.cls_token_id != b.cls_token_id:
        diff = f"vocabulary {len(va)} vs {len(vb)} tokens" if len(va) != len(vb) else "same size, other tokens or special ids"
        raise ConfigError(
            f"teacher {teacher.info.path} and student {student.info.path} tokenize differently ({diff})",
            hint="distil from a teacher with the student's tokenizer",
        )


@torch.no_grad()
def evaluate(
    encoder: Encoder, module, texts: list[str], labels: list[int] | None, device, *, max_length: int = 128, batch: int = 128, reference=None
) -> EvalResult:
    """Accuracy (labeled classifier data) and/or mean cosine to ``reference``'s outputs (any model)."""
    return evaluate_tokens(encoder, module, Tokens(encoder, texts, max_length), labels, device, batch=batch, reference=reference)


@torch.no_grad()
def evaluate_tokens(
    encoder: Encoder, module, tokens: Tokens, labels: list[int] | None, device, *, batch: int = 128, reference=None
) -> EvalResult:
    """:func:`evaluate` on texts tokenized once (batches of similar length, for speed)."""
    was = module.training
    module.eval()
    scored = labels is not None and encoder.info.task == "classifier"
    order = sorted(range(len(tokens)), key=lambda i: tokens.lengths[i])
    correct, cos, n = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.float64), 0
    label_t = torch.tensor(labels) if scored else None
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        inputs, _ = tokens.batch(idx, device)
        out = module(*inputs).float()
        if scored:
            correct += (out.argmax(-1).cpu() == label_t[idx]).sum()
        if reference is not None:
            ref = reference(*inputs).float()
            cos += torch.nn.functional.cosine_similarity(out, ref, dim=-1).sum().double().cpu()
        n += out.shape[0]
    module.train(was)
    return EvalResult(
        texts=n,
        accuracy=int(correct) / max(n, 1) if scored else None,
        cosine_to_teacher=float(cos) / max(n, 1) if reference is not None else None,
    )

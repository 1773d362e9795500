"""Training and eval texts for QAT: reading the data file, tokenizing batches, scoring a student."""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.build.load import Encoder
from edgekit.build.quant.report import EvalResult
from edgekit.deploy import data as datafiles
from edgekit.errors import ConfigError


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
    was = module.training
    module.eval()
    scored = labels is not None and encoder.info.task == "classifier"
    correct, cos, n = 0, 0.0, 0
    for i in range(0, len(texts), batch):
        inputs, _ = encode(encoder, texts[i : i + batch], device, max_length)
        out = module(*inputs).float()
        if scored:
            correct += int((out.argmax(-1).cpu() == torch.tensor(labels[i : i + batch])).sum())
        if reference is not None:
            ref = reference(*inputs).float()
            cos += float(torch.nn.functional.cosine_similarity(out, ref, dim=-1).sum())
        n += out.shape[0]
    module.train(was)
    return EvalResult(
        texts=n,
        accuracy=correct / max(n, 1) if scored else None,
        cosine_to_teacher=cos / max(n, 1) if reference is not None else None,
    )

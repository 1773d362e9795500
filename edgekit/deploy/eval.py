"""Step ``eval``: accuracy of the artifact itself, on the user's data, with its own runtime.

- classifier + labeled data: accuracy, macro-F1, per-class F1;
- embedding model + query/doc pairs: recall@1, recall@10 and MRR, ranking every doc for
  every query by cosine similarity;
- embedding model, any data: cosine fidelity to the original PyTorch model (needs torch and
  the source checkpoint whose sha256 the manifest records; skipped with a note otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.deploy import artifact, data
from edgekit.deploy.runtime import Predictor
from edgekit.errors import DataError

SCHEMA_VERSION = 1
EXIT_LATENCY_TEXTS = 200


class EvalReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION
    created: str
    artifact: str
    manifest_sha256: str
    target: str
    task: str
    data: str
    data_sha256: str
    data_kind: str
    n: int
    metrics: dict[str, float]
    per_class_f1: dict[str, float] | None = None
    exits: dict | None = None  # early-exit artifacts: histogram, measured vs expected latency
    notes: list[str] = []


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class F1 (0 where a class is neither predicted nor present)."""
    scores = np.zeros(n_classes)
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return scores


def ranks(queries: np.ndarray, docs: np.ndarray, relevant: np.ndarray | None = None) -> np.ndarray:
    """Per query, the cosine rank of its one relevant doc among ``docs`` (1: it ranks first; ties count
    in its favour); the relevant doc of queries[i] is docs[relevant[i]] (default: docs[i])."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    sims = q @ d.T
    own = sims[np.arange(len(q)), np.arange(len(q)) if relevant is None else relevant]
    return (sims > own[:, None]).sum(axis=1) + 1


def retrieval(queries: np.ndarray, docs: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """recall@k and MRR when docs[i] is the one relevant document of queries[i]."""
    rank = ranks(queries, docs)
    out = {f"recall@{k}": float(np.mean(rank <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / rank))
    return out


# The source model's outputs on the texts, or None with a note saying why (edgekit.build.load.torch_reference).
Reference = Callable[[artifact.Manifest, list[str], list[str]], "np.ndarray | None"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def evaluate(
    artifact_dir: str | Path,
    data_file: str | Path,
    *,
    batch: int = 16,
    fidelity: bool = True,
    reference: Reference | None = None,
    progress: Callable[[str], None] | None = None,
    docs_without_exits: bool = False,
) -> EvalReport:
    """Evaluate the artifact in ``artifact_dir`` on ``data_file``.

    ``docs_without_exits`` (query/doc pairs on an early-exit artifact): the docs go through the single graph the
    artifact ships, as an index built offline by the model without exits; only the queries take exits.

    Fidelity to PyTorch needs ``reference`` (the build side's ``edgekit.build.load.torch_reference``):
    this side never imports torch.
    """
    say = progress or (lambda msg: None)
    data_file = Path(data_file)
    kind = data.kind(data_file)
    notes: list[str] = []
    metrics: dict[str, Any] = {}
    per_class = None
    with Predictor(artifact_dir) as pred:
        manifest = pred.manifest
        if manifest.task == "classifier":
            if kind != "labeled":
                raise DataError(
                    f"{data_file}: a classifier needs records with 'text' and 'label' (found {kind} data)",
                    hint="add a 'label' field to each record",
                )
            labeled = data.read_labeled(data_file, manifest.source.labels or [])
            texts = labeled.texts
            say(f"classifying {len(texts)} texts")
            logits = pred.predict(texts, batch=batch)
            y_true, y_pred = np.array(labeled.labels), logits.argmax(-1)
            f1 = f1_scores(y_true, y_pred, len(manifest.source.labels or []))
            present = np.unique(np.concatenate([y_true, y_pred]))
            metrics = {"accuracy": float(np.mean(y_true == y_pred)), "macro_f1": float(f1[present].mean())}
            per_class = {name: float(f1[i]) for i, name in enumerate(manifest.source.labels or [])}
            outputs = logits
        else:
            if kind == "labeled":
                notes.append("labels ignored: an embedding model has no classes; give query/doc pairs for retrieval metrics")
            if kind == "pairs":
                queries, docs = data.read_pairs(data_file)
                texts = queries + docs
            else:
                texts = data.read_texts(data_file)
            say(f"embedding {len(texts)} texts")
            if kind == "pairs" and docs_without_exits and pred.exits is not None:
                notes.append("docs embedded by the single graph (no exits), as an offline index; only the queries took exits")
                outputs = np.concatenate([pred.predict(queries, batch=batch), pred.predict(docs, batch=batch, exits=False)])
            else:
                outputs = pred.predict(texts, batch=batch)
            if docs_without_exits and (kind != "pairs" or pred.exits is None):
                notes.append("--docs-without-exits ignored: it applies to query/doc pairs on an early-exit artifact")
            if kind == "pairs":
                metrics.update(retrieval(outputs[: len(queries)], outputs[len(queries) :]))
        if (note := pred.tokenizer.truncation_note(texts)) is not None:
            notes.append(note)
        exits = None
        if pred.exits is not None:
            from edgekit.deploy.exits.controller import latency_check

            say("early exit: measured vs expected latency (batch 1)")
            exits = latency_check(pred.exits, [pred.tokenizer([t]) for t in texts[:EXIT_LATENCY_TEXTS]])
            metrics["mean_exit_layer"] = exits["mean_exit_layer"]
            for key in ("measured_mean_latency_ms", "single_graph_latency_ms", "measured_over_single_graph", "expected_latency_ms"):
                if exits[key] is not None:
                    metrics[key] = exits[key]
        if fidelity:
            say("PyTorch reference for fidelity")
            ref = reference(manifest, texts, notes) if reference is not None else None
            if reference is None:
                notes.append("fidelity to PyTorch not computed: no PyTorch reference given (edgekit.build.load.torch_reference)")
            if ref is not None:
                if manifest.task == "classifier":
                    metrics["torch_argmax_agreement"] = float(np.mean(ref.argmax(-1) == outputs.argmax(-1)))
                cos = _cosines(ref, outputs)
                metrics["fidelity_cosine_mean"] = float(cos.mean())
                metrics["fidelity_cosine_min"] = float(cos.min())
    return EvalReport(
        created=artifact.now(),
        artifact=str(artifact_dir),
        manifest_sha256=artifact.manifest_sha256(artifact_dir),
        target=manifest.target,
        task=manifest.task,
        data=str(data_file),
        data_sha256=artifact.sha256_file(data_file),
        data_kind=kind,
        n=len(texts),
        metrics=metrics,
        per_class_f1=per_class,
        notes=notes,
        exits=exits,
    )

"""Sequence lengths for shape-bucketed targets: one option spelling, one set of helpers.

Every target that compiles fixed sequence lengths (``openvino-cpu`` buckets, ``openvino-npu``
static IRs, ``jetson`` optimization profiles, ``ort-mobile`` fixed shapes) takes the same two
options, at most one of them:

- ``seq_lens``: the lengths, ``"64,128"`` or ``[64, 128]`` (sorted, unique, each >= 4);
- ``data``: a texts file (.txt, or JSONL/CSV ``text``) whose token-length histogram picks them:
  p50, p90 and max, each rounded up to a multiple of 16 and capped at the model's max length
  (``openvino-cpu``, whose buckets are cheap to add: :func:`least_padding`).

:func:`plan_seq_lens` turns either into lengths (or None: neither given), and the session
helpers (:func:`run_in_buckets`, :func:`fit_feed`, :func:`pad_to`) fit a feed to one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from edgekit.deploy import data, parity
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.tokenizer import Tokenizer
from edgekit.errors import ConfigError, TargetError

ROUND = 16  # lengths from data are rounded up to a multiple of this
MIN_LEN = 4


def _split_ints(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]  # one length: seq_lens: 128 in YAML
    return [int(x) for x in v.replace(" ", "").split(",") if x] if isinstance(v, str) else v


def _check_seq_lens(v: list[int] | None) -> list[int] | None:
    if v is not None and (not v or min(v) < MIN_LEN):
        raise ValueError(f"give at least one sequence length, each >= {MIN_LEN}")
    return sorted(set(v)) if v is not None else None


# The option types: '64,128', [64, 128] or 128 -> sorted, unique, each >= 4; a texts file.
SeqLens = Annotated[
    list[int] | None,
    BeforeValidator(_split_ints),
    AfterValidator(_check_seq_lens),
    Field(description="sequence lengths, e.g. 64,128 (or [64, 128])"),
]
DataFile = Annotated[
    str | None,
    Field(
        description="texts file whose token-length histogram picks the sequence lengths (p50/p90/max, rounded up to 16;"
        " openvino-cpu: the max_buckets lengths that pad them least)"
    ),
]


@dataclass(frozen=True)
class SeqPlan:
    """Sequence lengths for a compile, where they came from, and (from ``data``) the texts' token lengths."""

    lengths: list[int]
    source: str
    observed: list[int] | None = None


def buckets_from_lengths(lengths: list[int], max_length: int) -> list[int]:
    """p50, p90 and max of the token lengths, rounded up to a multiple of 16, capped at ``max_length``."""
    if not lengths:
        raise ConfigError("no texts to pick sequence lengths from", hint="pass a data file with texts, or seq_lens")
    picks = (np.percentile(lengths, 50), np.percentile(lengths, 90), max(lengths))
    return sorted({min(max_length, ROUND * math.ceil(p / ROUND)) for p in picks})


def least_padding(lengths: list[int], max_length: int, count: int) -> list[int]:
    """At most ``count`` sequence lengths, multiples of 16 (or ``max_length``), the last holding the longest of
    ``lengths``, that minimize the total padded length of ``lengths``: each input runs at the smallest one that
    holds it, and time grows with the padded length. Exact (dynamic programming over the 16-token grid)."""
    if not lengths:
        raise ConfigError("no texts to pick sequence lengths from", hint="pass a data file with texts, or seq_lens")
    grid = sorted({min(max_length, ROUND * math.ceil(max(n, 1) / ROUND)) for n in lengths})
    counts = np.array([sum(1 for n in lengths if min(max_length, ROUND * math.ceil(max(n, 1) / ROUND)) == g) for g in grid])
    before = np.concatenate([[0], np.cumsum(counts)])  # inputs at grid points below index i: before[i]
    n = len(grid)
    # cost[k][j]: least padded total of the inputs at grid[0..j] with k + 1 lengths, the last at grid[j]
    cost = np.full((count, n), np.inf)
    back = np.zeros((count, n), dtype=int)
    cost[0] = [grid[j] * before[j + 1] for j in range(n)]
    for k in range(1, count):
        for j in range(k, n):
            options = [cost[k - 1][i] + grid[j] * (before[j + 1] - before[i + 1]) for i in range(k - 1, j)]
            best = int(np.argmin(options))
            cost[k][j], back[k][j] = options[best], best + k - 1
    k = int(np.argmin(cost[:, n - 1]))  # fewer lengths when more cannot pad less
    picks, j = [], n - 1
    while k >= 0:
        picks.append(grid[j])
        j, k = back[k][j], k - 1
    return sorted(picks)


def token_lengths(onnx_dir: Path, manifest: Manifest, path: str | Path) -> list[int]:
    """Token count of every text in ``path``, with the artifact's own tokenizer."""
    return Tokenizer(onnx_dir, manifest).lengths(data.read_texts(path))


def plan_seq_lens(onnx_dir: Path, manifest: Manifest, seq_lens: list[int] | None, data_file: str | None) -> SeqPlan | None:
    """The sequence lengths ``seq_lens`` or ``data`` ask for, checked against the model's max length; None if neither is given."""
    max_length = manifest.tokenizer.max_length
    if seq_lens is not None:
        too_long = [s for s in seq_lens if s > max_length]
        if too_long:
            raise ConfigError(
                f"sequence length {too_long[0]} exceeds the model's max length {max_length}", hint=f"use seq_lens <= {max_length}"
            )
        return SeqPlan(list(seq_lens), "option seq_lens")
    if data_file is not None:
        lengths = token_lengths(onnx_dir, manifest, data_file)
        return SeqPlan(
            buckets_from_lengths(lengths, max_length), f"p50/p90/max token length of {len(lengths)} texts in {data_file}", lengths
        )
    return None


def refuse_on_static_export(manifest: Manifest, seq_lens: list[int] | None, data_file: str | None, target: str) -> None:
    """A static export has its shape baked in: ``seq_lens`` other than that shape, or ``data``, are an error."""
    static = manifest.static_shape
    if static and (data_file is not None or (seq_lens is not None and seq_lens != [static[1]])):
        raise ConfigError(
            f"{target}: the model was exported with the static shape {static}; it cannot take other sequence lengths",
            hint="drop seq_lens/data, or export with dynamic shapes",
        )


# ---------------------------------------------------------------- fitting feeds to a length


def row_lengths(feed: dict[str, np.ndarray], pad_id: int) -> np.ndarray:
    """Per row, the columns up to its last real token (attention mask, else non-pad ids)."""
    real = feed["attention_mask"] != 0 if "attention_mask" in feed else feed["input_ids"] != pad_id
    return np.where(real.any(axis=1), real.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)


def used_length(feed: dict[str, np.ndarray], pad_id: int) -> int:
    """Columns up to the last real token of any row (at least 1)."""
    return max(1, int(row_lengths(feed, pad_id).max(initial=0)))


def pad_to(feed: dict[str, np.ndarray], seq: int, pad_id: int) -> dict[str, np.ndarray]:
    """Every [batch, seq] input cut or padded to ``seq`` columns: the pad id for ``input_ids``, 0 elsewhere (mask 0:
    ignored). Inputs of lower rank (the scalars of calibration's exit timing graph) pass unchanged."""
    out = {}
    for name, value in feed.items():
        if value.ndim < 2:
            out[name] = value
            continue
        value = value[:, :seq]
        if value.shape[1] < seq:
            fill = pad_id if name == "input_ids" else 0
            value = np.concatenate([value, np.full((value.shape[0], seq - value.shape[1]), fill, value.dtype)], axis=1)
        out[name] = value
    return out


def fit_feed(feed: dict[str, np.ndarray], batch: int, seq: int, pad_id: int) -> dict[str, np.ndarray]:
    """``feed`` (at most ``batch`` rows, real tokens within ``seq`` columns) padded or cut to ``[batch, seq]``.

    Only all-padding columns are cut; missing rows repeat the last one; inputs of lower rank pass unchanged."""
    out = {}
    for name, value in pad_to(feed, seq, pad_id).items():
        if value.ndim >= 2 and value.shape[0] < batch:
            value = np.concatenate([value, np.repeat(value[-1:], batch - value.shape[0], axis=0)], axis=0)
        out[name] = np.ascontiguousarray(value)
    return out


def pick_bucket(length: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for s in buckets:
        if length <= s:
            return s
    raise TargetError(
        f"an input of {length} tokens is longer than the largest sequence length compiled ({buckets[-1]})",
        hint="truncate the text, or compile with a larger seq_lens",
    )


def run_in_buckets(
    feed: dict[str, np.ndarray],
    batch: int,
    buckets: list[int],
    pad_id: int,
    run: Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Run ``feed`` through static-shape models: ``batch`` rows at a time, each chunk padded
    to the smallest bucket that holds it; ``run(bucket, feed)`` runs one model."""
    rows = next(iter(feed.values())).shape[0]
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, rows, batch):
        chunk = {k: v[i : i + batch] for k, v in feed.items()}
        n = next(iter(chunk.values())).shape[0]
        bucket = pick_bucket(used_length(chunk, pad_id), buckets)
        for name, value in run(bucket, fit_feed(chunk, batch, bucket, pad_id)).items():
            parts.setdefault(name, []).append(value[:n])
    return {name: np.concatenate(p, axis=0) for name, p in parts.items()}


def check_reference_fits(onnx_dir: Path, manifest: Manifest, longest: int, what: str) -> None:
    """Raise if PyTorch's parity texts are longer than ``longest`` tokens: parity could not run."""
    feed, _ = parity.load_reference(onnx_dir / parity.REFERENCE)
    need = used_length(feed, manifest.tokenizer.pad_id)
    if need > longest:
        raise ConfigError(
            f"the parity texts reach {need} tokens but the longest static {what} is {longest}, so parity with PyTorch cannot be checked",
            hint=f"use a {what} of at least {need} (the model's max length is {manifest.tokenizer.max_length})",
        )

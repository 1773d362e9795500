"""Quantized checkpoints: a plain Hugging Face checkpoint of the latent float weights, plus
``edgekit_quant.json`` with the scheme and the learned quantizer parameters.

``edgekit.build.load.load`` sees ``edgekit_quant.json`` and calls :func:`apply_saved`, which
re-applies ``quantize_`` (and a mixed-precision plan, ``config.part_bits``) and loads the quantizer state, so ``edgekit export`` exports the
quantized model (quantizers as ordinary ONNX ops, weights folded to quantized constants).
Without edgekit the directory still loads as the float model it was trained from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from pydantic import ValidationError

from edgekit.build.quant.api import float_state, quant_config_of, quant_state, quantize_
from edgekit.build.quant.config import QuantConfig
from edgekit.build.quant.layout import hf_model_of
from edgekit.build.quant.modules import apply_parts
from edgekit.errors import CheckpointError, ConfigError

QUANT_FILE = "edgekit_quant.json"
FORMAT = 1


# sentence-transformers files that say how an embedding model pools and normalizes
SIDE_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
SIDE_DIRS = ("1_Pooling", "2_Normalize")


def copy_side_files(source: str | Path, out: str | Path) -> None:
    """Copy the sentence-transformers pooling/normalization files from ``source`` to ``out``."""
    source, out = Path(source), Path(out)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    for name in SIDE_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, out / name, dirs_exist_ok=True)


def save_quantized(
    model, tokenizer, out: str | Path, *, source: str | Path | None = None, dtype: torch.dtype | None = None, extra: dict | None = None
) -> Path:
    """Write ``model`` (quantized with ``quantize_``) to ``out``; ``dtype=torch.float16`` halves the files.

    ``source``: the float checkpoint it came from, whose sentence-transformers pooling files
    are copied along (embedding models). Quantizer parameters are always written in float32
    (they are a few floats per layer)."""
    out = Path(out)
    hf = hf_model_of(model)
    config = quant_config_of(model) or quant_config_of(hf)
    if config is None:
        raise CheckpointError("the model is not quantized", hint="call edgekit.build.quant.quantize_ first")
    if apply_parts(hf, config):  # the modules must already follow the plan the file will record
        raise CheckpointError(
            f"the model's weight quantizers do not follow its mixed-precision plan ({len(config.part_bits)} parts)",
            hint="apply the plan (edgekit.build.quant.modules.apply_parts) right after quantize_, before calibrating and training",
        )
    state = {k: v.detach().cpu() for k, v in float_state(hf).items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if source is not None:
        copy_side_files(source, out)
    qstate = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "values": v.detach().cpu().float().flatten().tolist()}
        for k, v in quant_state(hf).items()
    }
    doc = {"format": FORMAT, "scheme": config.scheme, "config": config.model_dump(), "state": qstate, **(extra or {})}
    (out / QUANT_FILE).write_text(json.dumps(doc, indent=1))
    return out


def read_quant_file(path: str | Path) -> dict:
    f = Path(path) / QUANT_FILE
    try:
        doc = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{f}: unreadable ({err})", hint="re-save the quantized checkpoint") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("state"), dict):
        raise CheckpointError(f"{f}: not an edgekit quantization file of format {FORMAT}", hint="re-save the quantized checkpoint")
    return doc


def apply_saved(hf_model, path: str | Path):
    """Re-apply the saved scheme to a freshly loaded float ``hf_model`` and load its quantizer state."""
    doc = read_quant_file(path)
    try:
        config = QuantConfig(**doc["config"])
    except (ValidationError, ConfigError, TypeError) as err:
        raise CheckpointError(
            f"{Path(path) / QUANT_FILE}: invalid quantization config ({str(err).splitlines()[0]})", hint="re-save the quantized checkpoint"
        ) from err
    quantize_(hf_model, config)
    try:
        apply_parts(hf_model, config)
    except ConfigError as err:
        raise CheckpointError(f"{Path(path) / QUANT_FILE}: {err.message}", hint="the file belongs to another model; re-save it") from err
    own = quant_state(hf_model)
    saved = doc["state"]
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or extra:
        which = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{Path(path) / QUANT_FILE}: quantizer state does not match scheme {config.scheme} ({which})",
            hint="the file belongs to another model or scheme; re-save it",
        )
    with torch.no_grad():
        for name, tensor in own.items():
            entry = saved[name]
            value = torch.tensor(entry["values"], dtype=torch.float32).reshape(entry["shape"])
            if tuple(value.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{Path(path) / QUANT_FILE}: {name} has shape {tuple(value.shape)}, the model needs {tuple(tensor.shape)}"
                )
            tensor.copy_(value.to(tensor.dtype))
    return config

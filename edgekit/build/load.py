"""Step ``load``: a trained checkpoint directory -> :class:`Encoder` (torch module + tokenizer).

The torch module takes the tokenizer's tensors and returns ``logits`` (classifier) or
``embeddings`` (pooled inside the module, optionally L2-normalized), which is exactly
what gets exported, so torch and every runtime compute the same function.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.build import checkpoint
from edgekit.build.specs import SPECS, ArchSpec
from edgekit.deps import require
from edgekit.errors import CheckpointError

# Missing keys that do not change the function we export.
_IGNORABLE_MISSING = ("pooler.", "position_ids")


@dataclass
class Encoder:
    """A loaded encoder: what ``export`` and the parity checks need."""

    module: Any  # torch.nn.Module: forward(*inputs in spec.input_names order) -> Tensor
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    info: checkpoint.CheckpointInfo
    spec: ArchSpec

    @property
    def output_name(self) -> str:
        return "logits" if self.info.task == "classifier" else "embeddings"

    def tokenize(self, texts: list[str], *, max_length: int | None = None, pad_to: int | None = None) -> dict:
        """Tokenize to numpy arrays named as the exported graph's inputs."""
        enc = self.tokenizer(
            texts,
            padding="max_length" if pad_to else True,
            truncation=True,
            max_length=pad_to or max_length or self.info.max_length,
            return_tensors="np",
        )
        return {name: enc[name].astype("int64") for name in self.spec.input_names}

    def run(self, feed: dict) -> Any:
        """Torch forward on a numpy feed; returns a numpy array."""
        torch = require("torch", for_="running the torch model")
        with torch.inference_mode():
            args = [torch.from_numpy(feed[name]) for name in self.spec.input_names]
            return self.module(*args).float().numpy()


def _wrapper_class():
    torch = require("torch", for_="loading a checkpoint")

    class EncoderModule(torch.nn.Module):
        """HF model + pooling, with positional inputs in the spec's order."""

        def __init__(self, model, input_names, task, pooling, normalize):
            super().__init__()
            self.model = model
            self.input_names = tuple(input_names)
            self.task = task
            self.pooling = pooling
            self.normalize = normalize

        def forward(self, *inputs):
            kwargs = dict(zip(self.input_names, inputs))
            out = self.model(**kwargs)
            if self.task == "classifier":
                return out.logits
            hidden = out.last_hidden_state
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=-1)
            return emb

    return EncoderModule


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# A tokenizer using less than this share of the model's embedding rows is another model's.
MIN_VOCAB_SHARE = 0.5


def _check_vocab(info: checkpoint.CheckpointInfo, config: Any, tokenizer: Any) -> None:
    """The tokenizer must be this model's: its ids fit the embedding table, most rows are used,
    and its padding id is the model's."""
    rows, size = int(getattr(config, "vocab_size", 0) or 0), len(tokenizer)
    hint = "save the model's own tokenizer beside it (tokenizer.save_pretrained(dir))"
    if rows and size > rows:
        raise CheckpointError(f"{info.path}: the tokenizer has {size} tokens, the model embeds only {rows} (config.vocab_size)", hint=hint)
    if rows and size < MIN_VOCAB_SHARE * rows:
        raise CheckpointError(
            f"{info.path}: the tokenizer has {size} tokens for a model with {rows} (config.vocab_size): probably another model's tokenizer",
            hint=hint,
        )
    pad_model, pad_tok = getattr(config, "pad_token_id", None), tokenizer.pad_token_id
    if pad_model is not None and pad_tok is not None and int(pad_model) != int(pad_tok):
        raise CheckpointError(
            f"{info.path}: the tokenizer pads with id {pad_tok}, the model with {pad_model} (config.pad_token_id): another model's tokenizer?",
            hint=hint,
        )


def _check_finite(info: checkpoint.CheckpointInfo, model: Any) -> None:
    """No NaN/Inf weight: such a model gives NaN on any text, which no runtime can match."""
    torch = require("torch", for_="loading a checkpoint")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{info.path}: weight {name} holds NaN/Inf values",
                hint="the checkpoint is damaged or training diverged; re-save a good one",
            )


def load(model: str | Path | None, *, task: str | None = None, pooling: str | None = None) -> Encoder:
    """Load a trained checkpoint directory (or ``default``) for export."""
    info = checkpoint.inspect(model, task=task, pooling=pooling)
    transformers = require("transformers", for_="loading a checkpoint")
    torch = require("torch", for_="loading a checkpoint")
    safetensors = require("safetensors", for_="loading a checkpoint")
    auto = transformers.AutoModelForSequenceClassification if info.task == "classifier" else transformers.AutoModel
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        # Mismatched shapes are loaded as random weights and reported below, by name.
        hf_model, loading = auto.from_pretrained(
            info.path,
            attn_implementation="eager",
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            dtype=torch.float32,  # export and parity are fp32 whatever dtype the checkpoint was saved in
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(info.path)
    except pickle.UnpicklingError as err:
        # torch.load(weights_only=True) refuses pickles that would run code or build arbitrary objects
        raise CheckpointError(
            f"{info.path}: refused to load {', '.join(f.name for f in info.weight_files)}: not a plain weights pickle ({_first_line(err)})",
            hint="it may run code when loaded; get the checkpoint from a trusted source, as model.safetensors",
        ) from err
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as err:
        raise CheckpointError(
            f"{info.path}: cannot load the checkpoint: {_first_line(err)}", hint="check the files or re-save with save_pretrained(dir)"
        ) from err
    except safetensors.SafetensorError as err:
        raise CheckpointError(
            f"{info.path}: unreadable safetensors file: {_first_line(err)}", hint="the file is corrupt; copy or re-save the checkpoint"
        ) from err
    missing = [k for k in loading.get("missing_keys", []) if not any(i in k for i in _IGNORABLE_MISSING)]
    if missing:
        raise CheckpointError(
            f"{info.path}: {len(missing)} weights missing from the checkpoint (e.g. {missing[0]}); they would be random",
            hint="the weights do not match config.json; re-save the trained model",
        )
    mismatched = list(loading.get("mismatched_keys", []))
    if mismatched:
        first = mismatched[0]
        detail = (
            f"{first[0]}: checkpoint {tuple(first[1])} vs config {tuple(first[2])}"
            if isinstance(first, tuple | list) and len(first) == 3
            else str(first)
        )
        raise CheckpointError(
            f"{info.path}: {len(mismatched)} weights have other shapes than config.json says (e.g. {detail})",
            hint="the weights do not match config.json; re-save the trained model",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"{info.path}: only a slow tokenizer is available", hint="save a fast tokenizer (tokenizer.json) with the model"
        )
    _check_vocab(info, hf_model.config, tokenizer)
    _check_finite(info, hf_model)
    if (info.path / "edgekit_quant.json").exists():  # a quantized checkpoint (edgekit.build.quant): rebuild its quantized modules
        from edgekit.build.quant.saving import apply_saved

        apply_saved(hf_model, info.path)
    module = _wrapper_class()(hf_model.eval(), SPECS[info.model_type].input_names, info.task, info.pooling, info.normalize).eval()
    return Encoder(module=module, tokenizer=tokenizer, info=info, spec=SPECS[info.model_type])


_REFERENCE_CACHE: dict[tuple[str, int], Any] = {}


def torch_reference(manifest: Any, texts: list[str], notes: list[str]) -> Any:
    """The outputs of the PyTorch model an artifact was made from (``manifest.source``) on ``texts``
    (numpy), or None with a note saying why not: what ``edgekit.deploy.eval.evaluate`` compares with."""
    from edgekit.deps import is_installed

    if not (is_installed("torch") and is_installed("transformers")):
        notes.append("fidelity to PyTorch not computed: torch/transformers not installed (pip install 'edgekit[export]')")
        return None
    src = Path(manifest.source.path)
    if not src.is_dir():
        notes.append(f"fidelity to PyTorch not computed: source checkpoint {src} not found on this machine")
        return None
    if checkpoint.inspect(src, task=manifest.source.task).sha256() != manifest.source.sha256:
        notes.append(f"fidelity to PyTorch not computed: {src} changed since the artifact was built (sha256 differs)")
        return None
    import numpy as np

    key = (manifest.source.sha256 + manifest.source.task + str(manifest.tokenizer.max_length), hash(tuple(texts)))
    if key not in _REFERENCE_CACHE:  # several artifacts of one model are often evaluated in one process
        enc = load(src, task=manifest.source.task, pooling=manifest.source.pooling)
        out = [enc.run(enc.tokenize(texts[i : i + 16], max_length=manifest.tokenizer.max_length)) for i in range(0, len(texts), 16)]
        _REFERENCE_CACHE[key] = np.concatenate(out)
    return _REFERENCE_CACHE[key]

"""Step ``load``: a trained checkpoint directory -> :class:`Encoder` (torch module + tokenizer).

The torch module takes the tokenizer's tensors and returns ``logits`` (classifier) or
``embeddings`` (pooled inside the module, optionally L2-normalized), which is exactly
what gets exported, so torch and every runtime compute the same function.
"""

from __future__ import annotations

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


def load(model: str | Path | None, *, task: str | None = None, pooling: str | None = None) -> Encoder:
    """Load a trained checkpoint directory (or ``default``) for export."""
    info = checkpoint.inspect(model, task=task, pooling=pooling)
    transformers = require("transformers", for_="loading a checkpoint")
    torch = require("torch", for_="loading a checkpoint")
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
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{info.path}: cannot load the checkpoint: {first}", hint="check the files or re-save with save_pretrained(dir)"
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
    if (info.path / "edgekit_quant.json").exists():  # a quantized checkpoint (edgekit.build.quant): rebuild its quantized modules
        from edgekit.build.quant.saving import apply_saved

        apply_saved(hf_model, info.path)
    module = _wrapper_class()(hf_model.eval(), SPECS[info.model_type].input_names, info.task, info.pooling, info.normalize).eval()
    return Encoder(module=module, tokenizer=tokenizer, info=info, spec=SPECS[info.model_type])

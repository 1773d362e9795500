"""``quantize_(model, config, filter_fn=None)``: swap modules in place (torchao's shape).

What is swapped, in the encoder layers only:
- every ``nn.Linear`` (Q, K, V, attention output, FFN in and out) -> :class:`QuantLinear`
  when weight or activation bits are below 32 (``filter_fn(module, fqn)`` can narrow this);
- the self-attention modules -> :class:`QuantSelfAttention` when attention bits are below 32;
- the embedding tables -> :class:`QuantEmbedding` when embedding bits are below 32.
The classifier head, the pooler and all LayerNorms stay in full precision.

QAT is prepare -> train -> convert: ``quantize_`` prepares (fake-quant modules with latent
float weights), training is :mod:`edgekit.build.quant.train`, and the deliverable is the
checkpoint of :mod:`edgekit.build.quant.saving` exported to ONNX (weights fold to quantized constants).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from edgekit.build.quant.config import QuantConfig, make_config
from edgekit.build.quant.layout import get, layout_of
from edgekit.build.quant.modules import QuantEmbedding, QuantLinear, QuantSelfAttention, apply_parts
from edgekit.build.quant.quantizers import Quantizer, _ActQuantizer
from edgekit.errors import ConfigError

FilterFn = Callable[[nn.Module, str], bool]


def _set(root: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(get(root, parent) if parent else root, name, module)


def quantize_(model: nn.Module, config: QuantConfig | str, filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap the encoder's modules for quantized ones, in place; returns ``model``.

    ``model``: an edgekit ``EncoderModule``, or a Hugging Face BERT/RoBERTa/DistilBERT/ELECTRA
    model. ``config``: a :class:`QuantConfig` or a scheme name. ``filter_fn(module, fqn)``:
    which encoder-layer linears to quantize (fqn relative to the base model); default all.
    """
    if isinstance(config, str):
        config = make_config(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"quantize_ takes a QuantConfig or a scheme name, not {type(config).__name__}")
    base, lay = layout_of(model)
    if any(isinstance(m, (QuantLinear, QuantSelfAttention, QuantEmbedding)) for m in base.modules()):
        raise ConfigError("the model is already quantized", hint="quantize a fresh copy of the float model")
    layers = get(base, lay.layers)
    if config.attention_bits < 32:
        for i in range(len(layers)):
            fqn = f"{lay.layers}.{i}.{lay.attention}"
            _set(base, fqn, QuantSelfAttention(get(base, fqn), (lay.q, lay.k, lay.v, lay.out), config))
    if config.weight_bits < 32 or config.activation_bits < 32:
        for i, layer in enumerate(layers):
            prefix = f"{lay.layers}.{i}"
            for name, mod in list(layer.named_modules()):
                fqn = f"{prefix}.{name}"
                if type(mod) is nn.Linear and (filter_fn is None or filter_fn(mod, fqn)):
                    _set(base, fqn, QuantLinear.from_float(mod, config, nonnegative_input=(name == lay.after_gelu)))
    if config.embedding_bits < 32:
        for name, mod in list(get(base, lay.embeddings).named_modules()):
            if type(mod) is nn.Embedding:
                _set(base, f"{lay.embeddings}.{name}", QuantEmbedding.from_float(mod, config))
    apply_parts(model, config)  # mixed precision: the parts of config.part_bits get their own weight bits
    model._edgekit_quant_config = config  # noqa: SLF001 - read back by saving/report
    return model


def quant_config_of(model: nn.Module) -> QuantConfig | None:
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    for m in (model, getattr(model, "model", None)):
        if m is not None and getattr(m, "_edgekit_quant_config", None) is not None:
            return m._edgekit_quant_config
    return None


def quantizers(model: nn.Module) -> Iterable[tuple[str, Quantizer]]:
    """(name, quantizer) for every quantizer in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, Quantizer))


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantizers' own parameters and buffers (learned scales, thresholds), by full name."""
    return {f"{n}.{k}": v.detach() for n, q in quantizers(model) for k, v in q.state_dict().items()}


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the quantizers' entries: a plain float checkpoint's keys."""
    skip = set(quant_state(model))
    return {k: v for k, v in model.state_dict().items() if k not in skip}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[tuple]) -> int:
    """Initialise the activation quantizers' scales from a few batches (positional inputs).

    Each quantizer sees its float input (the ones before it pass through unquantized)."""
    acts = [q for _, q in quantizers(model) if isinstance(q, _ActQuantizer) and not bool(q.initialized)]
    for q in acts:
        q.observing = True
    n = 0
    try:
        for batch in batches:
            model(*batch)
            n += 1
    finally:
        for q in acts:
            q.finish_observing()
    return n

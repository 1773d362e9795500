"""Where the parts of each encoder architecture live, as data (like ``edgekit.build.specs``).

Paths are relative to ``hf_model.base_model`` (BertModel, RobertaModel, DistilBertModel...).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import CheckpointError


@dataclass(frozen=True)
class Layout:
    layers: str  # the ModuleList of transformer layers
    attention: str  # self-attention module, relative to a layer
    q: str  # projections, relative to the self-attention module
    k: str
    v: str
    out: str | None  # output projection inside the self-attention module (DistilBERT), else None
    after_gelu: str  # the linear fed by the GELU output, relative to a layer (non-negative input)
    embeddings: str = "embeddings"


_BERT = Layout(layers="encoder.layer", attention="attention.self", q="query", k="key", v="value", out=None, after_gelu="output.dense")
_DISTIL = Layout(layers="transformer.layer", attention="attention", q="q_lin", k="k_lin", v="v_lin", out="out_lin", after_gelu="ffn.lin2")

LAYOUTS: dict[str, Layout] = {"bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT, "distilbert": _DISTIL}


def hf_model_of(model):
    """The Hugging Face model inside an edgekit ``EncoderModule``, a DDP wrapper, or itself."""
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    if hasattr(model, "input_names") and hasattr(model, "model"):  # edgekit.build.load's EncoderModule
        model = model.model
    if not hasattr(model, "base_model") or not hasattr(model, "config"):
        raise CheckpointError(
            f"{type(model).__name__} is not a Hugging Face encoder", hint="pass an edgekit Encoder's module or a transformers model"
        )
    return model


def layout_of(model) -> tuple[object, Layout]:
    """(base model, layout) for a Hugging Face encoder."""
    hf = hf_model_of(model)
    model_type = hf.config.model_type
    if model_type not in LAYOUTS:
        raise CheckpointError(f"quantization does not support architecture {model_type!r}", hint=f"supported: {', '.join(LAYOUTS)}")
    return hf.base_model, LAYOUTS[model_type]


def get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def layers(model) -> list:
    base, lay = layout_of(model)
    return list(get(base, lay.layers))


WORD_EMBEDDINGS = "word_embeddings"  # the token table's name in every supported architecture


@dataclass(frozen=True)
class Part:
    """One weight matrix a mixed-precision plan gives its own bits: a linear of an encoder layer or
    the word embedding table. ``name`` is its path under the base model (as ``quantize_`` names it)."""

    name: str
    kind: str  # q, k, v, o, ffn-in, ffn-out or embedding
    layer: int | None
    rows: int  # output channels (embedding: vocabulary), one scale each
    cols: int

    @property
    def label(self) -> str:
        return "embedding" if self.layer is None else f"layer {self.layer} {self.kind}"

    @property
    def params(self) -> int:
        return self.rows * self.cols


def _kind(rel: str, lay: Layout) -> str:
    attn = f"{lay.attention}."
    named = {f"{attn}{lay.q}": "q", f"{attn}{lay.k}": "k", f"{attn}{lay.v}": "v", lay.after_gelu: "ffn-out"}
    if rel in named:
        return named[rel]
    return "o" if rel.startswith("attention") else "ffn-in"


def parts(model, *, embeddings: bool = True) -> list[Part]:
    """Every linear of the encoder layers (in order) and, with ``embeddings``, the word embedding table."""
    from torch import nn

    base, lay = layout_of(model)
    out = []
    for i, layer in enumerate(get(base, lay.layers)):
        for rel, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                out.append(Part(f"{lay.layers}.{i}.{rel}", _kind(rel, lay), i, mod.out_features, mod.in_features))
    if embeddings:
        table = getattr(get(base, lay.embeddings), WORD_EMBEDDINGS)
        out.append(Part(f"{lay.embeddings}.{WORD_EMBEDDINGS}", "embedding", None, table.num_embeddings, table.embedding_dim))
    return out

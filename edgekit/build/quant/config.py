"""Quantization settings: bits per part (weights, embeddings, activations, attention) and
the named schemes of the papers.

``W1A1`` means 1-bit weights and activations; ``E`` is the embeddings' bits (32 = kept
in floating point when a name has no ``E``). The classifier head, the pooler and every
LayerNorm always stay in full precision, as in BiBERT, BiT and TernaryBERT.

Mixed precision: ``part_bits`` maps a part (a linear of an encoder layer, or the word
embedding table, named by its path under the base model, e.g.
``encoder.layer.0.attention.self.query``) to its own weight bits, 1, 2 or 8; every other
part keeps the scheme's. :mod:`edgekit.build.quant.sensitivity` chooses such a plan under a
size budget; :func:`edgekit.build.quant.modules.apply_parts` applies it to a quantized model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from edgekit.errors import ConfigError, first_error

WEIGHT_BITS = (1, 2, 32)
PART_BITS = (1, 2, 8)  # weight bits a part of a mixed plan may take (all lower to INT8 codes)
EMBEDDING_BITS = (1, 2, 32)
ACTIVATION_BITS = (1, 4, 8, 32)
ATTENTION_BITS = (1, 4, 8, 32)
# Which weight quantizer serves which bit width.
WEIGHT_METHODS = {
    "sign": 1,  # BiBERT / BinaryBERT: alpha * sign(w), alpha = mean|w| per output channel
    "twn": 2,  # TernaryBERT (TWN): threshold 0.7 * mean|w|, statistical scale
    "twn-learned": 2,  # TernaryBERT (LAT/LSQ-style): same threshold, learned scale
    "absmean": 2,  # BitNet b1.58: RoundClip(w / mean|w|, -1, 1) * mean|w|
    "absmedian": 2,  # BitNet b1.58 median variant (small models)
}
ACTIVATION_METHODS = {
    "elastic": (1,),  # BiT: learned scale alpha and threshold beta, two-set binarization
    "sign": (1,),  # BiBERT: sign with a learned scale, {-1,+1} everywhere
    "lsq": (4, 8),  # LSQ: learned step size
    "calibrated": (4, 8),  # max-calibrated step size, fixed after calibration
}
METHODS = ("bibert", "bit", "ternary", "bitnet", "custom")


class QuantConfig(BaseModel):
    """One quantization scheme. Build it with :func:`make_config` to get one-line errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scheme: str = "custom"
    method: Literal["bibert", "bit", "ternary", "bitnet", "custom"] = "custom"
    weight_bits: Literal[1, 2, 32] = 32
    weight_method: Literal["sign", "twn", "twn-learned", "absmean", "absmedian"] | None = None
    embedding_bits: Literal[1, 2, 32] = 32
    activation_bits: Literal[1, 4, 8, 32] = 32
    activation_method: Literal["elastic", "sign", "lsq", "calibrated"] | None = None
    attention_bits: Literal[1, 4, 8, 32] = 32
    bi_attention: bool = False  # BiBERT: {0,1} attention map bool(QK^T) in place of softmax
    part_bits: dict[str, Literal[1, 2, 8]] = {}  # mixed precision: part path -> weight bits (see the module docstring)

    @model_validator(mode="after")
    def _consistent(self) -> QuantConfig:
        _check(self.model_dump())  # one-line ConfigError, not a pydantic ValidationError
        return self

    @model_serializer(mode="wrap")
    def _uniform_unchanged(self, handler):
        """A uniform scheme dumps as it did before mixed plans existed (no ``part_bits`` key), so saved
        checkpoints, reports and resume states of uniform runs compare equal to new ones."""
        data = handler(self)
        if not self.part_bits:
            data.pop("part_bits", None)
        return data

    @property
    def name(self) -> str:
        e = f"e{self.embedding_bits}" if self.embedding_bits < 32 else ""
        return f"w{self.weight_bits}{e}a{self.activation_bits}" + ("-mixed" if self.part_bits else "")

    @property
    def mixed(self) -> bool:
        return bool(self.part_bits)

    def part_method(self, bits: int, *, embedding: bool = False) -> str:
        """The weight quantizer of a part with ``bits``: the scheme's own where the bits match, else
        sign (1 bit), TWN (2 bits) or per-row absmax (8 bits)."""
        own = self.embedding_bits if embedding else self.weight_bits
        if bits == own and self.weight_method is not None and WEIGHT_METHODS.get(self.weight_method) == bits:
            return self.weight_method
        return {1: "sign", 2: "twn", 8: "absmax"}[bits]

    def with_parts(self, part_bits: dict[str, int]) -> QuantConfig:
        """This scheme with the mixed-precision plan ``part_bits`` (validated; {} removes the plan)."""
        fields = {**self.model_dump(), "part_bits": dict(sorted(part_bits.items()))}
        _check(fields)
        try:
            return QuantConfig(**fields)
        except ValidationError as err:
            raise ConfigError(f"quant: {first_error(err)}") from err


def _one_of(values) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def _check(fields: dict) -> None:
    """Ranges and cross-field rules, on raw fields, so every message is one line naming the field."""
    c = _Fields(fields)
    for field, allowed in (
        ("weight_bits", WEIGHT_BITS),
        ("embedding_bits", EMBEDDING_BITS),
        ("activation_bits", ACTIVATION_BITS),
        ("attention_bits", ATTENTION_BITS),
    ):
        value = getattr(c, field)
        if isinstance(value, bool) or value not in allowed:
            raise ConfigError(f"quant.{field}: must be {_one_of(allowed)} (got {value!r})")
    if c.method not in METHODS:
        raise ConfigError(f"quant.method: must be one of {', '.join(METHODS)} (got {c.method!r})")
    if c.weight_bits < 32:
        wm = c.weight_method or ("sign" if c.weight_bits == 1 else "twn")
        if WEIGHT_METHODS.get(wm) != c.weight_bits:
            fits = [m for m, b in WEIGHT_METHODS.items() if b == c.weight_bits]
            raise ConfigError(f"quant.weight_method: {wm!r} does not make {c.weight_bits}-bit weights; use {_one_of(fits)}")
    for field in ("activation_bits", "attention_bits"):
        bits = getattr(c, field)
        if bits < 32:
            am = c.activation_method or ("elastic" if bits == 1 else "lsq")
            if am not in ACTIVATION_METHODS:
                raise ConfigError(f"quant.activation_method: must be one of {', '.join(ACTIVATION_METHODS)} (got {am!r})")
            if bits == 1 and am not in ("elastic", "sign"):
                raise ConfigError(f"quant.activation_method: {am!r} is for 4/8 bits; {field}=1 needs elastic or sign")
    if c.bi_attention and c.attention_bits != 1:
        raise ConfigError("quant.bi_attention: needs attention_bits=1 (the map is {0,1})")
    parts = c.part_bits if isinstance(c.part_bits, dict) else {}
    for part, bits in parts.items():
        if isinstance(bits, bool) or bits not in PART_BITS:
            raise ConfigError(f"quant.part_bits.{part}: must be {_one_of(PART_BITS)} (got {bits!r})")
    if parts and c.weight_bits >= 32:
        raise ConfigError("quant.part_bits: a mixed plan needs a scheme with low-bit weights (weight_bits 1 or 2)")


class _Fields:
    def __init__(self, fields: dict) -> None:
        self.__dict__.update({name: f.default for name, f in QuantConfig.model_fields.items()})
        self.__dict__.update(fields)


def _scheme(
    method: str, w: int, a: int, *, e: int = 32, attn: int | None = None, wm: str | None = None, am: str | None = None, bi: bool = False
) -> dict:
    return dict(
        method=method,
        weight_bits=w,
        weight_method=wm or ("sign" if w == 1 else "twn"),
        embedding_bits=e,
        activation_bits=a,
        activation_method=am or ("elastic" if a == 1 else "lsq"),
        attention_bits=a if attn is None else attn,
        bi_attention=bi,
    )


# Named schemes, as the papers name them. ``w*`` aliases point at the BiT/TernaryBERT variant.
SCHEMES: dict[str, dict] = {
    "ternary-w2a8": _scheme("ternary", 2, 8),  # TernaryBERT, embeddings kept fp32
    "ternary-w2e2a8": _scheme("ternary", 2, 8, e=2),  # TernaryBERT 2-2-8
    "ternary-lat-w2a8": _scheme("ternary", 2, 8, wm="twn-learned"),  # TernaryBERT, learned weight scale
    "ternary-w2a4": _scheme("ternary", 2, 4),
    "bitnet-w2a8": _scheme("bitnet", 2, 8, wm="absmean"),  # BitNet b1.58
    "bitnet-median-w2a8": _scheme("bitnet", 2, 8, wm="absmedian"),  # BitNet b1.58, median scale
    "bit-w1a8": _scheme("bit", 1, 8),  # BiT intermediate step
    "bit-w1a4": _scheme("bit", 1, 4),
    "bit-w1a1": _scheme("bit", 1, 1),  # BiT, embeddings fp32
    "bit-w1e1a1": _scheme("bit", 1, 1, e=1),  # BiT 1-1-1
    "bibert-w1a1": _scheme("bibert", 1, 1, am="sign", bi=True),  # BiBERT, embeddings fp32
    "bibert-w1e1a1": _scheme("bibert", 1, 1, e=1, am="sign", bi=True),  # BiBERT 1-1-1
}
ALIASES = {
    "w2a8": "ternary-w2a8",
    "w2e2a8": "ternary-w2e2a8",
    "w1a8": "bit-w1a8",
    "w1a4": "bit-w1a4",
    "w1a1": "bit-w1a1",
    "w1e1a1": "bit-w1e1a1",
}


def make_config(scheme: str | QuantConfig | None = None, **overrides) -> QuantConfig:
    """A :class:`QuantConfig` from a scheme name (case-insensitive) plus per-field overrides."""
    if isinstance(scheme, QuantConfig):
        return scheme.model_copy(update=overrides) if overrides else scheme
    fields: dict = {}
    if scheme is not None:
        key = str(scheme).strip().lower()
        key = ALIASES.get(key, key)
        if key not in SCHEMES:
            raise ConfigError(f"unknown quantization scheme {scheme!r}", hint=f"valid schemes: {', '.join([*SCHEMES, *ALIASES])}")
        fields = {"scheme": key, **SCHEMES[key]}
    fields.update(overrides)
    if overrides and scheme is not None:
        fields["method"] = fields.get("method", "custom")
    _check(fields)  # one-line messages before pydantic's own (type) validation
    try:
        return QuantConfig(**fields)
    except ValidationError as err:
        raise ConfigError(f"quant: {first_error(err)}") from err


# ----------------------------------------------------------------------------- distillation


class DistillConfig(BaseModel):
    """Weights of the distillation losses (0 turns one off); see :mod:`edgekit.build.quant.distill`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    logits: float = 1.0
    temperature: float = 1.0
    hidden: float = 0.0
    attention: float = 0.0
    dmd: float = 0.0
    embedding: float = 1.0
    ce: float = 0.0

    @model_validator(mode="after")
    def _non_negative(self) -> DistillConfig:
        for k, v in self.model_dump().items():
            if v < 0 or (k == "temperature" and v <= 0):
                raise ConfigError(f"distill.{k}: must be a number >= 0{' (> 0 for temperature)' if k == 'temperature' else ''} (got {v!r})")
        return self

    @property
    def needs(self) -> set[str]:
        """Which internals must be captured."""
        need = set()
        if self.hidden:
            need.add("hidden")
        if self.attention:
            need.add("attention")
        if self.dmd:
            need.add("qkv")
        return need


# Paper defaults per method family: BiBERT uses DMD + logits; BiT logits + hidden states;
# TernaryBERT logits + hidden + attention.
DISTILL_DEFAULTS: dict[str, DistillConfig] = {
    "bibert": DistillConfig(logits=1.0, dmd=1.0),
    "bit": DistillConfig(logits=1.0, hidden=1.0),
    "ternary": DistillConfig(logits=1.0, hidden=1.0, attention=1.0),
    "bitnet": DistillConfig(logits=1.0, hidden=1.0, attention=1.0),
    "custom": DistillConfig(logits=1.0, hidden=1.0),
}


def distill_config(scheme: QuantConfig, override: DistillConfig | None = None, *, ce: float | None = None) -> DistillConfig:
    """The losses for ``scheme``: ``override``, else the paper's defaults for its method; ``ce`` sets the label loss."""
    cfg = override or DISTILL_DEFAULTS[scheme.method]
    return DistillConfig(**{**cfg.model_dump(), "ce": ce}) if ce is not None else cfg  # validated, unlike model_copy

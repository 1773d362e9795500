"""Recipes: one YAML file naming the checkpoint, the data, the steps with their settings,
the targets and the budgets of a build (``edgekit build RECIPE``).

The schema is a tree of frozen pydantic models with ``extra="forbid"``: a typo is an error
naming the field and the allowed keys or values, never a warning. :func:`load` turns the
first validation error into one line, ``recipes/x.yaml: steps.quantize.steps: ...``.
:func:`edgekit.build.recipe_check.check_files` then checks what exists on disk (model, data files) without torch.

Relative paths are relative to the working directory ``edgekit build`` runs in (as every
other command's paths are); ``edgekit:NAME`` names a data file shipped with edgekit
(``edgekit:pydoc_sentences.txt``, ``edgekit:pydoc_pairs.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekit.build.validation import describe_error
from edgekit.deploy.targets import TARGETS
from edgekit.errors import ConfigError

SCHEMA_VERSION = 1
SHIPPED_PREFIX = "edgekit:"
TargetName = Literal[tuple(TARGETS)]  # type: ignore[valid-type] - the Literal comes from the TARGETS dict
METRICS = ("accuracy", "macro_f1", "recall@1", "recall@10", "mrr")
DEFAULT_METRIC = {"classifier": "accuracy", "embedding": "mrr"}


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def resolve_path(value: str | Path) -> Path:
    """A recipe path: ``edgekit:NAME`` is a data file shipped with edgekit, the rest as written."""
    text = str(value)
    if text.startswith(SHIPPED_PREFIX):
        from edgekit.deploy import data

        return data.shipped(text[len(SHIPPED_PREFIX) :])
    return Path(text).expanduser()


# ----------------------------------------------------------------------------- sections


class Data(_M):
    """Data files: JSONL/CSV (``text`` + ``label`` for classifiers, ``query``/``doc`` pairs) or .txt."""

    train: str | None = Field(None, description="training texts for quantization (QAT) and exit heads")
    calibration: str | None = Field(None, description="PTQ and exit calibration texts (default: train)")
    dev: str | None = Field(None, description="held-out data every artifact is evaluated on (accuracy budget)")

    def calibration_file(self) -> str | None:
        return self.calibration or self.train


class Quantize(_M):
    """QAT with distillation from the float model (edgekit.build.quant.train)."""

    scheme: str = Field(description="e.g. ternary-w2a8, bit-w1a1, bibert-w1a1, bitnet-w2a8")
    steps: int | None = Field(None, ge=1, description="training steps per stage")
    epochs: float | None = Field(None, gt=0, description="or: epochs per stage")
    limit: int | None = Field(None, ge=1, description="train on the first N texts only")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8)
    lr: float | None = Field(None, gt=0, description="default by weight bits: 5e-4 (1 bit), 1e-4 (2 bits)")
    multi_step: bool = Field(False, description="BiT: float teacher -> intermediate student -> final student")
    intermediate: str = "bit-w1a8"
    ce: float | None = Field(None, ge=0, description="weight of cross entropy with the labels (default: distillation only)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    save_every: int = Field(50, ge=1, description="training steps between resumable checkpoints")
    teacher: str | None = Field(None, description="teacher checkpoint (default: the model itself)")
    save_dtype: Literal["float32", "float16"] = Field("float32", description="dtype of the saved float weights")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on a CUDA device, fp32 elsewhere")
    padding: Literal["longest", "max_length"] = Field("longest", description="pad each batch to its longest text, or to max_length")
    length_buckets: int = Field(64, ge=1, description="batches drawn from chunks of similar length (seeded); 1 turns it off")
    lr_scaling: Literal["none", "sqrt", "linear"] = Field("none", description="scale the learning rate by (batch_size / 32) ** (1/2 | 1)")
    deterministic: bool = Field(False, description="deterministic kernels: two runs of one seed give the same checkpoint on one machine")
    eval_every: int | None = Field(None, ge=1, description="with data.dev: score every N steps and keep each stage's best state")
    select_best: bool = Field(True, description="restore each stage's best dev state at its end")
    budget_mb: float | None = Field(
        None, gt=0, description="mixed precision: bits per part by sensitivity on data.dev, to fit this lowered size in MB"
    )
    mean_bits: float | None = Field(None, ge=1, le=8, description="mixed precision: or this mean of weight bits (1 to 8)")
    unlabeled: str | None = Field(None, description="unlabeled corpus (.txt, or JSONL/CSV with 'text'): distillation only, no label loss")
    augment: int = Field(0, ge=0, le=50, description="augmented copies per training text (distillation only; 0: none)")
    augment_method: Literal["both", "replace", "mask"] = Field(
        "both", description="replace: words by embedding neighbours; mask: a span by the mask token; both"
    )
    attention_bits: Literal[1, 4, 8, 32] | None = Field(
        None,
        description="bits of the attention core (Q, K, the softmax, V; default: the scheme's). 32 keeps it in float: "
        "ort-cpu can then run each layer's attention as one fused INT8 QAttention (compile -o fusion=qattention)",
    )

    @field_validator("scheme", "intermediate")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        from edgekit.build.quant.config import ALIASES, SCHEMES

        key = v.strip().lower()
        if ALIASES.get(key, key) not in SCHEMES:
            raise ValueError(f"unknown scheme {v!r}; valid schemes: {', '.join([*SCHEMES, *ALIASES])}")
        return ALIASES.get(key, key)

    @model_validator(mode="after")
    def _budget(self) -> Quantize:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give the training budget as steps or epochs (exactly one): QAT is slow on a CPU, so a recipe says how long")
        if self.budget_mb is not None and self.mean_bits is not None:
            raise ValueError("give one bit budget, budget_mb or mean_bits, not both")
        return self


def quantize_settings(**fields: Any) -> Quantize:
    """The quantize step's settings from a command's flags (one-line errors naming the flag)."""
    try:
        return Quantize(**fields)
    except ValidationError as err:
        line, _ = describe_error(err, Quantize)
        raise ConfigError(f"invalid quantize option: {line}", hint="see 'edgekit quantize --help'") from None


class Exits(_M):
    """Exit heads trained by self-distillation, then calibrated (edgekit.exits)."""

    layers: list[Annotated[int, Field(ge=1)]] | None = Field(None, description="layers with an exit (default: every layer)")
    head_pooling: Literal["cls", "mean"] | None = Field(
        None, description="what each exit head reads: the mean of the tokens or the first token (default: mean; embedding models: theirs)"
    )
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    unlabeled: str | None = Field(
        None, description="more texts without labels (.txt, or JSONL/CSV with 'text'): the heads distil the final layer on them too"
    )
    limit: int | None = Field(None, ge=1, description="train and calibrate on the first N texts only")
    max_drop: float = Field(1.0, ge=0, description="calibration: quality budget in points for the chosen exit policy / depth")
    policy: str | None = Field(
        None, description="dynamic exit: NAME=VALUE or NAME=V1,V2,... (one per exit before the last); default: chosen by calibration"
    )
    confidence: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="calibration: check max_drop on this one-sided bootstrap bound of the dev drop, in [0.5, 1) (0: the point estimate)",
    )
    groups: str | None = Field(
        None, description="calibration: a field of the calibration file naming each row's group; the bound resamples whole groups"
    )
    holdout: float = Field(
        0.5,
        ge=0,
        le=0.8,
        description="calibration: share of the rows (whole groups) held out to check the chosen point's bound on; 0: the rows searched",
    )
    estimate: Literal["agreement", "expected"] = Field(
        "agreement",
        description="calibration on unlabelled texts: count a text whose exit disagrees with the final exit as a point lost "
        "(agreement), or by the final exit's probabilities (expected: the drop expected if they are calibrated)",
    )
    temperature_data: str | None = Field(
        None, description="with estimate: expected, a labelled file on which the final exit's temperature is fit first"
    )
    queries_only: bool = Field(
        False,
        description="calibration on query/doc pairs (embedding model): only queries take exits; docs are embedded once "
        "by the model without exits, as an offline index is",
    )
    form: Literal["graph", "segments", "both"] = Field(
        "graph",
        description="the exit artifact: graph (the exits decided inside one ONNX graph, one runtime call), segments "
        "(one graph per segment, rows that leave dropped from a batch), or both (the graph for single inputs, the "
        "segments for batches; a third copy of the weights)",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("confidence")
    @classmethod
    def _level(cls, v: float) -> float:
        if 0 < v < 0.5:
            raise ValueError("must be 0 (the point estimate) or a one-sided level in [0.5, 1), e.g. 0.9")
        return v

    @model_validator(mode="after")
    def _temperature_needs_expected(self) -> Exits:
        if self.temperature_data is not None and self.estimate != "expected":
            raise ValueError("temperature_data scales the probabilities that estimate: expected reads; set estimate: expected")
        return self


class Prune(_M):
    """Static depth cut at an exit (what static-shape targets need)."""

    layer: int | None = Field(None, ge=1, description="keep layers 1..LAYER (default: the shallowest exit within exits.max_drop)")


class Lower(_M):
    """Quantized checkpoint -> INT8 QDQ ONNX graph (edgekit.build.lower)."""

    pack: bool = Field(True, description="store ternary/binary weights bit-packed")


class Ptq(_M):
    """INT8 post-training quantization of the float ONNX export (edgekit.build.ptq)."""

    samples: int = Field(256, ge=1, description="calibration texts")
    method: Literal["ort", "nncf"] = Field(
        "ort", description="ort: ONNX Runtime static QDQ (any target compiles it); nncf: NNCF for OpenVINO (an openvino-cpu artifact)"
    )


class Export(_M):
    opset: int = Field(17, ge=17, le=21)
    static_shape: tuple[int, int] | None = Field(None, description="fixed [batch, sequence], or '1x128'")
    max_length: int | None = Field(None, ge=8, description="cap on the sequence length")
    # Parity tolerances vs PyTorch for the export and every compile (default: by precision,
    # fp32: atol 1e-3, cosine 0.9999). A fake-quant graph exported without steps.lower
    # rounds its 8-bit activations, and a float difference of 1e-7 can move a value across a
    # rounding step: such graphs need looser figures (e.g. atol 0.05, min_cosine 0.99).
    atol: float | None = Field(None, gt=0)
    min_cosine: float | None = Field(None, ge=-1, le=1)
    min_argmax_agreement: float | None = Field(None, ge=0, le=1)

    def tolerance(self):
        """The export's parity tolerance (fp32 defaults with these fields over them), or None for the defaults."""
        from edgekit.deploy.parity import Tolerance

        given = self.tolerance_overrides()
        return Tolerance(**given) if given else None

    def tolerance_overrides(self) -> dict[str, float]:
        """The fields given, to lay over a compile's own tolerance (its precision's, or the one a PTQ artifact
        records): ``--atol`` on an INT8 compile loosens atol and keeps INT8's argmax and cosine floors."""
        return {
            k: v
            for k, v in (("atol", self.atol), ("min_cosine", self.min_cosine), ("min_argmax_agreement", self.min_argmax_agreement))
            if v is not None
        }

    @field_validator("static_shape", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = v.lower().split("x")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"write BATCHxSEQUENCE, e.g. 1x128 (got {v!r})")
            return tuple(int(p) for p in parts)
        return v


class Steps(_M):
    """The pipeline steps; each runs when present, always in this order:
    quantize -> exits -> prune -> lower | export -> ptq -> compile (per target)."""

    quantize: Quantize | None = None
    exits: Exits | None = None
    prune: Prune | None = None
    lower: Lower | None = None
    ptq: Ptq | None = None
    export: Export = Export()


class Target(_M):
    name: TargetName
    device: str | None = Field(None, description="device profile (devices/*.yaml): fills device, threads; checks precision")
    # validated once, by the target's own options model, when the recipe becomes a plan (edgekit.build.plan)
    options: dict[str, Any] = Field(default_factory=dict, description="target options (see 'edgekit compile --help')")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str | None) -> str | None:
        if v is not None:
            from edgekit.deploy import devices

            known = devices.all_profiles()
            if v not in known:
                raise ValueError(f"unknown device {v!r}; known devices: {', '.join(known)}")
        return v


class Budgets(_M):
    """What every artifact must meet; a failed budget makes ``edgekit build`` exit with code 3."""

    max_accuracy_drop: float | None = Field(None, ge=0, description="points below the FP32 checkpoint on data.dev")
    metric: Literal["accuracy", "macro_f1", "recall@1", "recall@10", "mrr"] | None = Field(
        None, description="what accuracy means (default: accuracy for classifiers, mrr for query/doc pairs)"
    )
    max_p50_ms: dict[str, float] = Field(default_factory=dict, description="device profile -> max batch-1 p50 latency (ms, model only)")
    max_size_mb: float | None = Field(None, gt=0, description="model files of each artifact (tokenizer and references not counted)")

    @field_validator("max_p50_ms")
    @classmethod
    def _devices(cls, v: dict[str, float]) -> dict[str, float]:
        if v:
            from edgekit.deploy import devices

            known = devices.all_profiles()
            for name, ms in v.items():
                if name not in known:
                    raise ValueError(f"unknown device {name!r}; known devices: {', '.join(known)}")
                if not ms > 0:
                    raise ValueError(f"{name}: the latency budget must be > 0 ms (got {ms})")
        return v


class Profile(_M):
    """How artifacts that run here are profiled (batch-1 first-token latency)."""

    enabled: bool = True
    seq_len: int = Field(128, ge=4)
    seconds: float = Field(1.0, gt=0, description="time budget per measured point")
    min_runs: int = Field(10, ge=3)
    warmup: int = Field(5, ge=0)
    cold_runs: int = Field(0, ge=0, description="fresh-process cold starts (slow; 0 skips)")
    threads: int | None = Field(None, ge=1)
    batches: list[int] | None = Field(None, description="throughput sweep batch sizes (default: batch 1; a static artifact: its batch)")
    texts: str | None = Field(None, description="time batch 1 on these real texts at their own lengths (default: seq_len tokens)")


class Recipe(_M):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the build's folder: OUTPUT/NAME/")
    description: str = ""
    model: str = Field("default", description="checkpoint directory, or 'default' (all-MiniLM-L6-v2)")
    task: Literal["classifier", "embedding"] | None = None
    data: Data = Data()
    steps: Steps = Steps()
    targets: list[Target] = Field(min_length=1)
    budgets: Budgets = Budgets()
    profile: Profile = Profile()
    output: str = Field("dist", description="output root; the build goes to OUTPUT/NAME/")
    cache: str = Field("build/cache", description="step cache (shared by recipes; keys are content hashes)")

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: list[Target]) -> list[Target]:
        names = [t.name for t in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"target {dup!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        s, d, b = self.steps, self.data, self.budgets
        if s.prune and not s.exits:
            raise ValueError("steps.prune needs steps.exits (the depth cut is made at a trained, calibrated exit)")
        if s.lower and s.exits:
            raise ValueError(
                "steps.lower takes a whole quantized checkpoint; with early exit drop steps.lower: the exit segments and "
                "steps.prune's depth cut of a quantized model are lowered to INT8 themselves"
            )
        if s.ptq and (s.quantize or s.lower):
            raise ValueError("steps.ptq quantizes a float model; a QAT model is lowered with steps.lower instead")
        if s.ptq and s.ptq.method == "nncf" and any(t.name != "openvino-cpu" for t in self.targets):
            raise ValueError("steps.ptq.method nncf makes an openvino-cpu artifact: list only that target, or use method ort")
        if s.ptq and s.exits and not s.prune:
            raise ValueError("steps.ptq needs one graph: with dynamic early exit (several segments) add steps.prune")
        if s.exits and s.export.static_shape:
            raise ValueError(
                "steps.export.static_shape does not apply to early-exit graphs; give static targets sequence buckets in their options"
            )
        if s.exits and not s.prune:
            static = [t.name for t in self.targets if TARGETS[t.name].static_shapes]
            if static:
                raise ValueError(f"dynamic early exit cannot run on {static[0]} (static shapes); add steps.prune for a depth cut")
        for step, need in (("quantize", d.train), ("exits", d.train)):
            if getattr(s, step) is not None and not need:
                raise ValueError(f"steps.{step} needs data.train")
        if s.quantize and (s.quantize.budget_mb is not None or s.quantize.mean_bits is not None) and not d.dev:
            raise ValueError("steps.quantize.budget_mb / mean_bits need data.dev: the sensitivity of each part is scored on it")
        if s.ptq and not d.calibration_file():
            raise ValueError("steps.ptq needs data.calibration (or data.train)")
        if b.max_accuracy_drop is not None and not d.dev:
            raise ValueError("budgets.max_accuracy_drop needs data.dev: accuracy is measured on it")
        if b.max_p50_ms:
            if not self.profile.enabled:
                raise ValueError("budgets.max_p50_ms needs profiling, and profile.enabled is false: the budget could never be checked")
            from edgekit.deploy import devices

            mine = {t.name for t in self.targets}
            for name in b.max_p50_ms:
                if not mine & set(devices.get(name).targets):
                    raise ValueError(f"budgets.max_p50_ms: device {name} runs none of this recipe's targets ({', '.join(sorted(mine))})")
        return self

    # ---- derived

    def metric_for(self, task: str) -> str:
        return self.budgets.metric or DEFAULT_METRIC[task]

    def canonical(self) -> str:
        """The recipe as canonical JSON (defaults filled in): what its hash is taken over."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def step_names(self) -> list[str]:
        """The steps that run, in order."""
        s = self.steps
        names = [n for n in ("quantize", "exits") if getattr(s, n) is not None]
        names.append("prune" if s.prune else "segments" if s.exits else "lower" if s.lower else "export")
        if s.ptq:
            names.append("ptq")
        return names


# ----------------------------------------------------------------------------- loading


def parse(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe from parsed YAML; errors name ``source`` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping, got {type(raw).__name__}", hint="start from 'edgekit recipe new'")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        line, hint = describe_error(err, Recipe, named={Steps: "step"})
        raise ConfigError(f"{source}: {line}", hint=hint or "see 'edgekit recipe new' for a commented example") from err


def load(path: str | Path) -> Recipe:
    """Read and validate a recipe file (schema only; see :func:`check_files`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file", hint="write one with 'edgekit recipe new'")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"{path}: cannot read YAML ({' '.join(x.strip() for x in first[:3])})", hint="fix the file's syntax") from err
    return parse(raw, str(path))

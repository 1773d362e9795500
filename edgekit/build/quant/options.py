"""The options of a quantization-aware training run: one typed model for every front-end
(``edgekit quantize``, a recipe's ``quantize`` step, Python callers). Torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from edgekit.build.quant.config import DistillConfig, make_config
from edgekit.errors import ConfigError, first_error

STATE_DIR = "train_state"  # OUT/train_state/state.pt: optimizer, step, RNG (``resume`` continues from it)
REPORT = "quant_report.json"
MAX_AUGMENT = 50  # augmented copies per training text (TinyBERT used 20)


class TrainOptions(BaseModel):
    """What to train, on what, for how long. Invalid values raise a one-line :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    data: str
    out: str
    scheme: str = "bit-w1a1"
    teacher: str | None = None  # default: the float model itself
    eval_data: str | None = None
    steps: int | None = None
    epochs: float | None = None  # 3 when neither steps nor epochs is given
    multi_step: bool = False
    intermediate: str = "bit-w1a8"
    intermediate_steps: int | None = None  # default: the same budget as the final stage
    intermediate_epochs: float | None = None
    batch_size: int = 32
    lr: float | None = None  # default by weight bits: 5e-4 (1 bit), 1e-4 (2 bits)
    weight_decay: float = 0.0
    warmup: float = 0.1
    max_length: int = 128
    seed: int = 0
    save_every: int = 500
    resume: bool = False
    distill: DistillConfig | None = None  # default: the paper's losses for the scheme's method
    ce: float | None = None  # weight of cross entropy with the labels, on top of ``distill`` (default: its own)
    device: str = "auto"
    save_dtype: Literal["float32", "float16"] = "float32"
    calib_batches: int = 4
    log_every: int = 20
    progress: bool = True
    keep_state: bool = True  # keep train_state/ after a finished stage
    limit: int | None = None  # use only the first N training texts (smoke runs)
    # speed (none of these changes what is trained, only how fast; see loop.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a CUDA device with bf16, fp32 elsewhere
    padding: Literal["longest", "max_length"] = "longest"  # pad each batch to its longest text, or always to max_length
    length_buckets: int = 64  # sort texts by length within chunks of this many batches (seeded); 1 turns it off
    lr_scaling: Literal["none", "sqrt", "linear"] = "none"  # scale the learning rate by (batch_size / 32) ** (1/2 | 1)
    deterministic: bool = False  # deterministic kernels: two runs of one seed agree exactly on one machine (slower on CUDA)
    # dev selection: with eval_data, score the student every eval_every steps and keep the best state of each stage
    eval_every: int | None = None  # default: 10 evaluations per stage
    select_best: bool = True
    # mixed precision (sensitivity.py): bits per part chosen on eval_data under one of these budgets
    budget_mb: float | None = None  # estimated lowered size in MB (packed 1/2-bit codes, int8 parts, scales, float rest)
    mean_bits: float | None = None  # mean weight bits over the quantized matrices, 1 to 8
    # more teacher signal (distillation only, no label loss on these rows; see augment.py)
    unlabeled: str | None = None  # an unlabeled corpus: .txt, or JSONL/CSV with 'text'
    augment: int = 0  # augmented copies per training text (word replacement from embedding neighbours, span masking)
    augment_method: Literal["both", "replace", "mask"] = "both"
    attention_bits: Literal[1, 4, 8, 32] | None = None  # the attention core's bits (Q, K, softmax, V); None: the scheme's
    augment_cache: str | None = None  # folder of the generated corpora (default: OUT/../.edgekit-augment)

    @classmethod
    def build(cls, **fields) -> TrainOptions:
        """Like ``TrainOptions(**fields)``, with pydantic's type errors as one-line :class:`ConfigError` s."""
        try:
            return cls(**fields)
        except ValidationError as err:
            raise ConfigError(f"train.{first_error(err)}") from err

    @field_validator("scheme", "intermediate")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return make_config(v).scheme  # ConfigError listing the valid schemes; aliases become the full name

    @model_validator(mode="after")
    def _ranges(self) -> TrainOptions:
        for name in (
            "steps",
            "intermediate_steps",
            "batch_size",
            "max_length",
            "save_every",
            "calib_batches",
            "log_every",
            "limit",
            "length_buckets",
            "eval_every",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"train.{name}: must be a positive integer (got {v!r})")
        for name in ("epochs", "intermediate_epochs", "lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"train.{name}: must be > 0 (got {v!r})")
        if self.ce is not None and self.ce < 0:
            raise ConfigError(f"train.ce: must be >= 0 (got {self.ce!r})")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"train.device: must be auto, cpu or cuda (got {self.device!r})")
        if self.budget_mb is not None and self.mean_bits is not None:
            raise ConfigError("train.budget_mb and train.mean_bits: give one budget, not both (--budget-mb or --mean-bits)")
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise ConfigError(f"train.budget_mb: must be > 0 (got {self.budget_mb!r})")
        if self.mean_bits is not None and not 1 <= self.mean_bits <= 8:
            raise ConfigError(f"train.mean_bits: must be between 1 and 8 (got {self.mean_bits!r})")
        if (self.budget_mb is not None or self.mean_bits is not None) and not self.eval_data:
            raise ConfigError(
                "a bit budget needs a dev set: the sensitivity of each part is scored on it", hint="pass --eval DEV (eval_data / data.dev)"
            )
        if not 0 <= self.augment <= MAX_AUGMENT:
            raise ConfigError(f"train.augment: must be 0 to {MAX_AUGMENT} copies per text (got {self.augment!r})")
        return self

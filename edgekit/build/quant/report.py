"""``quant_report.json``: what a quantization-aware training run did, as typed models. Torch-free.

The JSON keys are those the report has always had (``stages[i].eval.accuracy``,
``teacher_eval``, ``texts``, ``device`` ...), so earlier reports read back with
:meth:`QuantReport.read`. ``eval``, ``teacher_eval`` and the eval figures that were not
measured are left out of the JSON rather than written as null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from edgekit.build.quant.config import DistillConfig, QuantConfig
from edgekit.build.quant.mixed import MixedPlan
from edgekit.errors import ArtifactError, first_error


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler):
        data = handler(self)
        for key in self.omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    # Mapping-style reads (``report["stages"][0]["scheme"]``, ``stage.get("eval", {})``) for code
    # written against the plain-dict report: they return the JSON form (dicts and lists), as the
    # dict report did. Attribute access is the typed way.
    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields and getattr(self, str(key)) is not None

    def get(self, key: str, default: Any = None) -> Any:
        if key not in type(self).model_fields or getattr(self, key) is None:
            return default
        return self.model_dump(mode="json", include={key})[key]


class EvalResult(_Record):
    """Scores on the eval data: accuracy (labeled classifier data) and/or mean cosine to the teacher."""

    omit_if_none = ("accuracy", "cosine_to_teacher")
    texts: int
    accuracy: float | None = None
    cosine_to_teacher: float | None = None


class Savings(_Record):
    """Theoretical FLOPs and size, float vs quantized (see :mod:`edgekit.build.quant.stats`)."""

    seq_len: int
    formula: str
    fp32_gflops: float
    quant_gflops: float
    flops_saving: float
    fp32_mb: float
    quant_mb: float
    size_saving: float


class ModelStats(_Record):
    """The trained student: scheme, savings, per-matrix code fractions, activation scales."""

    scheme: str
    config: QuantConfig | None
    savings: Savings
    weights: list[dict[str, Any]]
    activations: list[dict[str, Any]]


class Speed(_Record):
    """How fast a stage trained: optimizer steps and texts per second of training (dev evaluations
    and checkpoint saves left out), the share of real tokens among those computed (the rest is
    padding), and the GPU's utilisation (percent, sampled) and peak memory where it ran on one."""

    omit_if_none = ("gpu_util_mean", "gpu_util_max", "gpu_memory_gb", "util_source")
    train_seconds: float
    steps_per_s: float
    samples_per_s: float
    tokens_per_s: float
    real_token_share: float
    precision: str
    padding: str
    length_buckets: int
    gpu_util_mean: float | None = None
    gpu_util_max: float | None = None
    gpu_memory_gb: float | None = None
    util_source: str | None = None


class DevCurve(_Record):
    """Dev scores within a stage: ``points`` are (step, score); the state at ``best_step`` is the one kept."""

    metric: str  # "accuracy" (labeled classifier data) or "cosine_to_teacher"
    every: int
    points: list[tuple[int, float]]
    best_step: int
    best_score: float
    restored: bool  # True when the kept state is the best one rather than the last


class Augmentation(_Record):
    """How the augmented copies were made (see :mod:`edgekit.build.quant.augment`)."""

    omit_if_none = ("replace_p", "neighbours", "span_words", "mask_token")
    copies: int  # asked for, per training text
    method: str  # both | replace | mask
    replace_p: float | None = None
    neighbours: int | None = None
    span_words: tuple[int, int] | None = None
    seed: int
    texts: int  # made (copies equal to their text or an earlier copy are dropped)
    file: str
    sha256: str
    cached: bool
    seconds: float
    vocabulary: str
    whole_words: int
    words_with_neighbours: int
    mask_token: str | None = None
    replaced_words: int
    masked_spans: int
    dropped_duplicates: int


class Corpus(_Record):
    """What a stage distilled on: the training file's texts, an unlabeled corpus and augmented copies.

    Training batches are drawn from their union; the label loss (``ce``) counts only the rows with a label."""

    omit_if_none = ("unlabeled_file", "augmentation")
    train: int
    labeled: int  # rows with a label (0 for unlabeled training data)
    unlabeled: int
    augmented: int
    total: int
    unlabeled_file: str | None = None
    augmentation: Augmentation | None = None


class StageReport(_Record):
    """One training stage (BiT multi-step has two)."""

    omit_if_none = ("eval", "model", "speed", "dev_curve", "corpus")
    scheme: str
    config: QuantConfig
    distill: DistillConfig
    out: str
    steps: int
    start_step: int
    epochs: float
    seconds: float
    lr: float
    loss_first: float | None
    loss_last: float | None
    batch_size: int
    world_size: int
    teacher: str = "fp32"  # "fp32", or the scheme of the previous stage's student
    eval: EvalResult | None = None
    model: ModelStats | None = None
    speed: Speed | None = None
    dev_curve: DevCurve | None = None
    corpus: Corpus | None = None


class QuantReport(_Record):
    """The whole run: data, device, the teacher's eval and every stage."""

    omit_if_none = ("teacher_eval", "mixed", "seed", "deterministic")  # seed and deterministic: absent in reports before 2026-12-01
    model: str
    teacher: str
    data: str
    texts: int
    device: str
    world_size: int
    scheme: str
    multi_step: bool
    stages: list[StageReport]
    flops_formula: str
    teacher_eval: EvalResult | None = None
    mixed: MixedPlan | None = None  # mixed precision: the bits per part, sizes and the sensitivity table (mixed.py)
    seed: int | None = None
    deterministic: bool | None = None  # deterministic kernels were asked for (TrainOptions.deterministic)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> QuantReport:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as err:
            raise ArtifactError(f"{path}: cannot read the quantization report ({err.strerror})") from err
        except ValidationError as err:
            raise ArtifactError(f"{path}: not a quantization report ({first_error(err)})", hint="rerun edgekit quantize") from err

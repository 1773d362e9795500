"""Records of a mixed-precision run (torch-free): the sensitivity table and the chosen plan, as they
appear in ``quant_report.json`` under ``mixed``. Computed by :mod:`edgekit.build.quant.sensitivity`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Score(_M):
    """One part quantized to ``bits`` (everything else float), scored against the float model."""

    bits: int
    loss: float  # KL (classifier) or 1 - cosine (embedding): what the plan minimises
    agreement: float | None = None  # classifiers: argmax agreement with the float model
    kl: float | None = None
    cosine: float | None = None


class PartRow(_M):
    part: str
    label: str  # "layer 3 ffn-out", "embedding"
    params: int
    scores: list[Score]  # one per measured bit width

    def loss(self, bits: int) -> float:
        return next(s.loss for s in self.scores if s.bits == bits)


class SensitivityTable(_M):
    """Parts sorted by sensitivity (loss at the scheme's bits, largest first)."""

    scheme: str
    metric: str  # "kl" or "1-cosine"
    dev_texts: int
    bits: list[int]
    rows: list[PartRow]


class MixedPlan(_M):
    """The chosen bits per part, its sizes, and the sensitivity table it came from."""

    scheme: str
    budget_mb: float | None = None
    mean_bits: float | None = None
    start: str  # which greedy start won: "scheme" or "1-bit"
    part_bits: dict[str, int]
    bits_count: dict[str, int]  # parts per bit width
    size_mb: float  # estimated lowered size of the plan (model_bytes)
    uniform_mb: float  # the scheme's own bits everywhere
    fp32_mb: float
    planned_mean_bits: float  # weight bits per weight over the parts
    predicted_loss: float  # sum of the parts' losses at their bits
    uniform_loss: float
    sensitivity: SensitivityTable

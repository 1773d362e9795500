"""Exit policies, in numpy: calibration simulates them and the deployed controller runs
them, with the very same code, so the artifact takes the decisions calibration measured.

Each policy has one threshold-like parameter and decides, at exit ``k``, which rows leave.
``outputs`` holds that exit's ``output`` (logits or embeddings), ``rep`` and ``score``;
``state`` carries what a policy needs from earlier exits (per row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from edgekit.errors import ConfigError


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) divided by log(C): 0 (certain) .. 1 (uniform)."""
    p = softmax(logits.astype(np.float64))
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(p.shape[-1])


@dataclass
class State:
    """Per-row memory across exits (rows are the ones still running)."""

    prev_pred: np.ndarray | None = None
    agree: np.ndarray | None = None
    prev_rep: np.ndarray | None = None

    def take(self, keep: np.ndarray) -> State:
        return State(*(None if a is None else a[keep] for a in (self.prev_pred, self.agree, self.prev_rep)))


@dataclass
class Policy:
    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classifier", "embedding")
    lower: ClassVar[float]
    upper: ClassVar[float]
    grid: ClassVar[tuple[float, ...]]
    param: float = 0.0
    higher_is_faster: ClassVar[bool] = True  # does a larger param exit earlier?
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lower <= self.param <= self.upper:
            raise ConfigError(
                f"policy {self.name}: parameter {self.param} out of range", hint=f"use a value in [{self.lower}, {self.upper}]"
            )

    def decide(self, outputs: dict[str, np.ndarray], state: State) -> tuple[np.ndarray, State]:
        raise NotImplementedError


class EntropyPolicy(Policy):
    """DeeBERT: leave when the normalised entropy of the exit's prediction is below the threshold."""

    name = "entropy"
    tasks = ("classifier",)
    lower, upper = 0.0, 1.0
    grid = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)

    def decide(self, outputs, state):
        return normalized_entropy(outputs["output"]) < self.param if self.param > 0 else np.zeros(len(outputs["output"]), bool), state


class PatiencePolicy(Policy):
    """PABEE: leave once the prediction has stayed the same for ``param`` consecutive exits."""

    name = "patience"
    tasks = ("classifier",)
    lower, upper = 1, 12
    grid = (1, 2, 3, 4, 5, 6)
    higher_is_faster = False

    def decide(self, outputs, state):
        pred = outputs["output"].argmax(-1)
        if state.prev_pred is None:
            agree = np.zeros(len(pred), dtype=np.int64)
        else:
            agree = np.where(pred == state.prev_pred, state.agree + 1, 0)
        return agree >= self.param, State(pred, agree, state.prev_rep)


class LearnedPolicy(Policy):
    """BERxiT-style: leave when the exit's learned score (P[this exit is right]) is high enough."""

    name = "learned"
    lower, upper = 0.0, 1.0
    grid = (1.0, 0.995, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)
    higher_is_faster = False

    def decide(self, outputs, state):
        return outputs["score"] >= self.param, state


class SimilarityPolicy(Policy):
    """MuE-style: leave when this layer's representation barely moved from the previous one's."""

    name = "similarity"
    lower, upper = -1.0, 1.0
    grid = (1.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
    higher_is_faster = False

    def decide(self, outputs, state):
        rep = outputs["rep"]
        if state.prev_rep is None:
            leave = np.zeros(len(rep), dtype=bool)
        else:
            leave = (rep * state.prev_rep).sum(-1) >= self.param
        return leave, State(state.prev_pred, state.agree, rep)


EXIT_POLICIES: dict[str, type[Policy]] = {p.name: p for p in (EntropyPolicy, PatiencePolicy, LearnedPolicy, SimilarityPolicy)}


def make(name: str, param: float, task: str | None = None) -> Policy:
    if name not in EXIT_POLICIES:
        raise ConfigError(f"unknown exit policy {name!r}", hint=f"known policies: {', '.join(EXIT_POLICIES)}")
    cls = EXIT_POLICIES[name]
    if task is not None and task not in cls.tasks:
        raise ConfigError(
            f"policy {name} needs a classifier (the model is an {task} model)", hint="use 'similarity' or 'learned' for embedding models"
        )
    return cls(param=param)


def parse(spec: str, task: str | None = None) -> Policy:
    """'entropy=0.3' -> EntropyPolicy(0.3)."""
    name, sep, value = spec.partition("=")
    try:
        param = float(value)
    except ValueError as err:
        raise ConfigError(f"invalid policy {spec!r}", hint="write NAME=VALUE, e.g. entropy=0.3 or patience=2") from err
    if not sep:
        raise ConfigError(f"invalid policy {spec!r}", hint="write NAME=VALUE, e.g. entropy=0.3 or patience=2")
    return make(name.strip(), param, task)


def simulate(policy: Policy, exits: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``policy`` to precomputed outputs of every exit for N rows.

    Returns (exit index per row, the output each row leaves with). The last exit takes
    every row still running. Same arithmetic as the controller, run on all rows at once.
    """
    n = len(exits[0]["output"])
    exit_at = np.full(n, len(exits) - 1)
    final = exits[-1]["output"].copy()
    running = np.arange(n)
    state = State()
    for k, out in enumerate(exits[:-1]):
        leave, state = policy.decide({key: v[running] for key, v in out.items()}, state)
        done = running[leave]
        exit_at[done] = k
        final[done] = out["output"][done]
        running = running[~leave]
        state = state.take(~leave)
        if not len(running):
            break
    return exit_at, final

"""Per-architecture export facts, as data.

One entry per supported ``config.model_type``. Adding an architecture of the same
encoder shape means adding a row here, not a subclass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    family: str
    input_names: tuple[str, ...]
    opset: int = 17
    # Positions usable by the model: RoBERTa offsets positions by padding_idx + 1.
    position_offset: int = 0


_BERT = ArchSpec("bert", ("input_ids", "attention_mask", "token_type_ids"))
_ROBERTA = ArchSpec("roberta", ("input_ids", "attention_mask"), position_offset=2)

SPECS: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": ArchSpec("xlm-roberta", ("input_ids", "attention_mask"), position_offset=2),
    "distilbert": ArchSpec("distilbert", ("input_ids", "attention_mask")),
    "electra": ArchSpec("electra", ("input_ids", "attention_mask", "token_type_ids")),
}

TASKS = ("classifier", "embedding")
POOLINGS = ("mean", "cls")

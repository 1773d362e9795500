"""Mixed precision by sensitivity: how much each part of a float model suffers from low-bit
weights, and which bits each part gets under a size budget.

Sensitivity (:func:`measure`): for each part (:func:`edgekit.build.quant.layout.parts`: the
q, k, v, o, ffn-in and ffn-out linears of every layer, and the word embedding table when the
scheme quantizes embeddings), the part's weights alone are replaced by their quantized values
(1, 2 and 8 bits; the scheme's own quantizer where its bits match), everything else float,
and the model is scored against the float model on the dev texts: for classifiers the
agreement of argmax and the mean KL(float || quantized) of the class distributions, for
embedding models the mean cosine to the float embeddings. The *loss* a plan minimises is
the KL (classifiers) or 1 - cosine (embeddings). Only weights are quantized here: a plan
chooses weight bits, and the activations are the scheme's in every plan.

Plan (:func:`choose`): a multiple-choice knapsack solved greedily. Each part takes 1, 2 or
8 bits at the cost of its packed size (bits per weight + one float32 scale per row, as
:mod:`edgekit.deploy.packing` stores it) or, with ``mean_bits``, of its bits x weights. From
a start, the upgrade (part, bits -> more bits) with the largest loss decrease per added
byte that still fits is applied until none fits. Two starts are tried and the plan with
the lower total loss is kept: the scheme's bits everywhere (then promoting the most
sensitive parts per byte to 8 bits) and 1 bit everywhere. The second start is what a
budget *at* the scheme's size needs: there, promoting alone fits nothing, and a part
goes to 8 bits only if less sensitive parts pay for it at 1 bit. Losses of parts are
taken as additive (the usual first-order assumption of mixed-precision search).

Sizes (:func:`model_bytes`) count what ``edgekit lower`` writes: packed codes and scales of
the quantized matrices, 8-bit parts as int8, everything else float32 (LayerNorms, biases,
the head, float embeddings), plus an estimate of the ONNX graph's own bytes (nodes, names,
per-column zero points: :data:`GRAPH_BYTES` and :data:`GRAPH_BYTES_PER_LAYER`, measured on
edgekit's lowered BERT graphs of 2, 4 and 6 layers, within 1 % of the real size). That
overhead is the same for every plan of a model, so it shifts sizes, never the choice.

The records (:class:`~edgekit.build.quant.mixed.SensitivityTable`, :class:`~edgekit.build.quant.mixed.MixedPlan`)
live in :mod:`edgekit.build.quant.mixed`. Importing this module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from edgekit.build.quant.config import PART_BITS, QuantConfig
from edgekit.build.quant.layout import Part, parts
from edgekit.build.quant.mixed import MixedPlan, PartRow, Score, SensitivityTable
from edgekit.deploy.packing import MIN_ELEMENTS as MIN_PACKED  # smaller int8 tensors stay unpacked
from edgekit.errors import ConfigError, DataError

__all__ = ["MixedPlan", "PartRow", "Score", "SensitivityTable", "check_budget", "choose", "measure", "model_bytes", "plan_mixed"]

MB = 1e6  # --budget-mb counts decimal megabytes, as edgekit lower prints sizes
GRAPH_BYTES = 16_000  # the lowered ONNX graph's own bytes, outside the layers (embeddings, head, I/O)
GRAPH_BYTES_PER_LAYER = 35_500  # and per encoder layer (nodes and their names), zero points aside


# ----------------------------------------------------------------------------- sizes


def scheme_bits(part: Part, config: QuantConfig) -> int:
    return config.embedding_bits if part.layer is None else config.weight_bits


def codes_bytes(n: int, bits: int) -> int:
    """Bytes of ``n`` codes of ``bits`` as the lowered artifact stores them (packed 1/2 bits, int8 otherwise)."""
    if bits >= 32:
        return 4 * n
    if bits == 8 or n < MIN_PACKED:
        return n
    return math.ceil(n * bits / 8)


def _matrix_bytes(rows: int, cols: int, bits: int) -> int:
    return 4 * rows * cols if bits >= 32 else codes_bytes(rows * cols, bits) + 4 * rows  # + one float32 scale per row


def model_bytes(model, config: QuantConfig, part_bits: dict[str, int] | None = None) -> int:
    """Estimated size of the lowered, packed model of ``config`` with ``part_bits`` over it (the
    plan's bits; default ``config.part_bits``). A float ``config`` (weight_bits 32) gives FP32."""
    from torch import nn

    from edgekit.build.quant.layout import get, layout_of

    part_bits = config.part_bits if part_bits is None else part_bits
    base, lay = layout_of(model)
    quantized: dict[int, int] = {}  # id(weight) -> bits
    if config.weight_bits < 32:
        for p in parts(model, embeddings=False):
            quantized[id(get(base, p.name).weight)] = part_bits.get(p.name, config.weight_bits)
    if config.embedding_bits < 32:
        for rel, mod in get(base, lay.embeddings).named_modules():
            if isinstance(mod, nn.Embedding):
                quantized[id(mod.weight)] = part_bits.get(f"{lay.embeddings}.{rel}", config.embedding_bits)
    total = 0
    for _, p in model.named_parameters():
        bits = quantized.get(id(p), 32)
        total += 4 * p.numel() if bits >= 32 else _matrix_bytes(p.shape[0], p[0].numel(), bits)
    if config.weight_bits < 32:  # the lowered graph: nodes, names, one int8 zero point per output column
        layers = len(get(base, lay.layers))
        total += GRAPH_BYTES + GRAPH_BYTES_PER_LAYER * layers + sum(p.rows for p in parts(model, embeddings=False))
    return total


def fp32_bytes(model) -> int:
    """The float32 weights alone (what a float export's weights weigh)."""
    return sum(4 * p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- sensitivity


def _outputs(module, tokens, order: list[list[int]], device) -> list:
    import torch

    with torch.no_grad():
        return [module(*tokens.batch(idx, device)[0]).float() for idx in order]


def _score(ref: list, out: list, classifier: bool, bits: int) -> Score:
    import torch
    from torch.nn import functional as F

    n = sum(r.shape[0] for r in ref)
    if classifier:
        agree = sum(int((r.argmax(-1) == o.argmax(-1)).sum()) for r, o in zip(ref, out, strict=True)) / n
        kl = (
            sum(
                float(F.kl_div(F.log_softmax(o, -1), F.log_softmax(r, -1), log_target=True, reduction="sum"))
                for r, o in zip(ref, out, strict=True)
            )
            / n
        )
        return Score(bits=bits, loss=max(kl, 0.0), agreement=agree, kl=kl)
    cos = sum(float(torch.nn.functional.cosine_similarity(o, r, dim=-1).sum()) for r, o in zip(ref, out, strict=True)) / n
    return Score(bits=bits, loss=max(1.0 - cos, 0.0), cosine=cos)


def measure(
    encoder,
    config: QuantConfig,
    texts: list[str],
    *,
    device=None,
    max_length: int = 128,
    batch: int = 128,
    bits: tuple[int, ...] = PART_BITS,
    progress: bool = True,
) -> SensitivityTable:
    """Sensitivity of every part of the float model ``encoder`` (an edgekit ``Encoder``) to ``bits``-bit
    weights, scored on ``texts`` against the float model itself. The weights are restored exactly."""
    import torch

    from edgekit.build.quant.layout import get, layout_of
    from edgekit.build.quant.modules import weight_quantizer
    from edgekit.build.quant.textdata import Tokens

    if not texts:
        raise DataError("sensitivity needs dev texts, and the dev set is empty", hint="pass a dev file with texts (--eval)")
    device = torch.device(device or "cpu")
    module = encoder.module.to(device)
    was = module.training
    module.eval()
    base, _ = layout_of(module)
    todo = parts(module, embeddings=config.embedding_bits < 32)
    tokens = Tokens(encoder, texts, max_length, device)
    ranked = sorted(range(len(tokens)), key=lambda i: tokens.lengths[i])
    order = [ranked[i : i + batch] for i in range(0, len(ranked), batch)]
    classifier = encoder.info.task == "classifier"
    reference = _outputs(module, tokens, order, device)
    rows = []
    with _Bar(progress, len(todo) * len(bits), "sensitivity") as bar, torch.no_grad():
        for part in todo:
            weight = get(base, part.name).weight
            saved = weight.detach().clone()
            scores = []
            for b in bits:
                quant = weight_quantizer(b, config.part_method(b, embedding=part.layer is None), saved)
                weight.copy_(quant.to(device)(saved.float()).to(weight.dtype))
                scores.append(_score(reference, _outputs(module, tokens, order, device), classifier, b))
                weight.copy_(saved)
                bar.advance(f"{part.label} w{b}")
            rows.append(PartRow(part=part.name, label=part.label, params=part.params, scores=scores))
    module.train(was)
    own = {p.name: scheme_bits(p, config) for p in todo}
    key = {r.part: (r.loss(own[r.part]) if own[r.part] in bits else max(s.loss for s in r.scores)) for r in rows}
    rows.sort(key=lambda r: -key[r.part])
    return SensitivityTable(
        scheme=config.scheme, metric="kl" if classifier else "1-cosine", dev_texts=len(tokens), bits=list(bits), rows=rows
    )


class _Bar:
    """A rich progress bar on a terminal; nothing elsewhere (or with ``enabled`` false)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        from rich.console import Console

        self._bar = None
        if enabled and Console().is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[part]}"), TimeElapsedColumn()
            )
            self._task = self._bar.add_task(title, total=total, part="")

    def advance(self, what: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, part=what)

    def __enter__(self) -> _Bar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# ----------------------------------------------------------------------------- plan


def _greedy(rows: list[PartRow], cost: Callable[[PartRow, int], float], budget: float, start: dict[str, int]) -> dict[str, int] | None:
    """Upgrades by loss decrease per added cost while they fit; None when ``start`` does not fit."""
    bits = dict(start)
    used = sum(cost(r, bits[r.part]) for r in rows)
    if used > budget * (1 + 1e-9):
        return None
    while True:
        best, best_ratio = None, 0.0
        for r in rows:
            now = bits[r.part]
            for b in (s.bits for s in r.scores):
                gain, extra = r.loss(now) - r.loss(b), cost(r, b) - cost(r, now)
                if b > now and gain > 0 and used + extra <= budget * (1 + 1e-9) and (best is None or gain / extra > best_ratio):
                    best, best_ratio = (r.part, b, extra), gain / extra
        if best is None:
            return bits
        bits[best[0]] = best[1]
        used += best[2]


def check_budget(model, config: QuantConfig, *, budget_mb: float | None = None, mean_bits: float | None = None) -> None:
    """One-line ConfigError for a budget no plan can meet, or one that needs no plan."""
    if (budget_mb is None) == (mean_bits is None):
        raise ConfigError("give one budget: --budget-mb or --mean-bits, not both" if budget_mb is not None else "no budget given")
    if config.weight_bits >= 32:
        raise ConfigError(f"scheme {config.scheme} has float weights: a bit plan needs a low-bit scheme")
    if mean_bits is not None:
        if not 1 <= mean_bits <= 8:
            raise ConfigError(f"--mean-bits {mean_bits:g}: must be between 1 (every part binary) and 8 (every part 8-bit)")
        return
    todo = parts(model, embeddings=config.embedding_bits < 32)
    smallest = model_bytes(model, config, {p.name: 1 for p in todo})
    fp32 = fp32_bytes(model)
    if budget_mb * MB < smallest:
        uniform = model_bytes(model, config, {})
        raise ConfigError(
            f"--budget-mb {budget_mb:g} is below the smallest size {config.scheme} can reach: {smallest / MB:.2f} MB "
            f"(every part at 1 bit; the scheme itself is {uniform / MB:.2f} MB)",
            hint="raise the budget"
            + ("" if config.embedding_bits < 32 else ", or use a scheme with low-bit embeddings (e.g. ternary-w2e2a8)"),
        )
    if budget_mb * MB >= fp32:
        raise ConfigError(
            f"--budget-mb {budget_mb:g} is at or above the FP32 size of the model ({fp32 / MB:.2f} MB): no quantization budget is needed",
            hint="drop --budget-mb, or give a budget below the FP32 size",
        )


def check_plan_inputs(model: str, scheme: str, *, budget_mb: float | None = None, mean_bits: float | None = None) -> None:
    """:func:`check_budget` for the checkpoint ``model`` and scheme name ``scheme`` (loads the model's structure)."""
    from edgekit.build.load import load
    from edgekit.build.quant.config import make_config

    config = make_config(scheme)
    if budget_mb is not None and mean_bits is None:
        check_budget(load(model).module, config, budget_mb=budget_mb)
    else:
        check_budget(None, config, budget_mb=budget_mb, mean_bits=mean_bits)


def choose(
    model, config: QuantConfig, table: SensitivityTable, *, budget_mb: float | None = None, mean_bits: float | None = None
) -> MixedPlan:
    """The bits per part under ``budget_mb`` (estimated lowered size) or ``mean_bits`` (bits per weight over the parts)."""
    check_budget(model, config, budget_mb=budget_mb, mean_bits=mean_bits)
    rows = table.rows
    by_part = {p.name: p for p in parts(model, embeddings=config.embedding_bits < 32)}
    missing = set(by_part) - {r.part for r in rows}
    if missing:
        raise ConfigError(f"the sensitivity table has no row for {sorted(missing)[0]}", hint="measure it on this model and scheme")
    own = {r.part: scheme_bits(by_part[r.part], config) for r in rows}
    fixed = model_bytes(model, config, {r.part: 1 for r in rows}) - sum(
        _matrix_bytes(by_part[r.part].rows, by_part[r.part].cols, 1) for r in rows
    )
    if mean_bits is not None:
        params = sum(r.params for r in rows)

        def cost(r: PartRow, b: int) -> float:
            return r.params * b

        budget = mean_bits * params
    else:

        def cost(r: PartRow, b: int) -> float:
            return _matrix_bytes(by_part[r.part].rows, by_part[r.part].cols, b)

        budget = budget_mb * MB - fixed
    candidates = []
    for name, start in (("scheme", own), ("1-bit", {r.part: 1 for r in rows})):
        bits = _greedy(rows, cost, budget, start)
        if bits is not None:
            candidates.append((sum(r.loss(bits[r.part]) for r in rows), name, bits))
    if not candidates:  # check_budget let it through, so only rounding can land here
        raise ConfigError(f"no bit plan fits the budget for {config.scheme}", hint="raise the budget")
    loss, start_name, bits = min(candidates, key=lambda c: c[0])
    plan = {p: b for p, b in bits.items() if b != own[p]}
    counts = {str(b): sum(1 for v in bits.values() if v == b) for b in sorted(set(bits.values()))}
    weights = sum(r.params for r in rows)
    return MixedPlan(
        scheme=config.scheme,
        budget_mb=budget_mb,
        mean_bits=mean_bits,
        start=start_name,
        part_bits=dict(sorted(plan.items())),
        bits_count=counts,
        size_mb=round(model_bytes(model, config, plan) / MB, 4),
        uniform_mb=round(model_bytes(model, config, {}) / MB, 4),
        fp32_mb=round(fp32_bytes(model) / MB, 4),
        planned_mean_bits=round(sum(r.params * bits[r.part] for r in rows) / weights, 4),
        predicted_loss=loss,
        uniform_loss=sum(r.loss(own[r.part]) for r in rows if own[r.part] in table.bits),
        sensitivity=table,
    )


def plan_mixed(
    encoder,
    config: QuantConfig,
    dev_texts: list[str],
    *,
    budget_mb: float | None = None,
    mean_bits: float | None = None,
    device=None,
    max_length: int = 128,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> tuple[QuantConfig, MixedPlan]:
    """Measure, choose, and return ``config`` with the plan (``part_bits``) and the plan's record.

    ``encoder``: the float model the student starts from. The budget is checked before anything runs."""
    check_budget(encoder.module, config, budget_mb=budget_mb, mean_bits=mean_bits)
    table = measure(encoder, config, dev_texts, device=device, max_length=max_length, progress=progress)
    plan = choose(encoder.module, config, table, budget_mb=budget_mb, mean_bits=mean_bits)
    if say is not None:
        say(
            f"mixed plan for {config.scheme}: {plan.bits_count} parts by bits, {plan.size_mb:.2f} MB "
            f"(uniform {plan.uniform_mb:.2f} MB), predicted {table.metric} {plan.predicted_loss:.4g} vs {plan.uniform_loss:.4g} uniform"
        )
    return config.with_parts(plan.part_bits), plan


def format_table(table: SensitivityTable, plan: MixedPlan | None = None, top: int | None = None) -> str:
    """The table as markdown (most sensitive first), with the planned bits when ``plan`` is given."""
    cols = [f"w{b} {'agree / KL' if table.metric == 'kl' else 'cosine'}" for b in table.bits]
    head = "| part | params | " + " | ".join(cols) + (" | planned bits |" if plan else " |")
    lines = [head, "|" + " --- |" * (len(cols) + 2 + (1 if plan else 0))]
    for r in table.rows[:top]:
        cells = [
            f"{s.agreement:.3f} / {s.kl:.4f}" if table.metric == "kl" else f"{s.cosine:.4f}" for s in sorted(r.scores, key=lambda s: s.bits)
        ]
        planned = f" | {plan.part_bits.get(r.part, '=')}" if plan else ""
        lines.append(f"| {r.label} | {r.params} | " + " | ".join(cells) + planned + " |")
    return "\n".join(lines)

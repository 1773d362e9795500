"""Quantization-aware training with distillation from the full-precision model: the whole run.

    from edgekit.build.quant.train import TrainOptions, run
    report = run(TrainOptions(model="CKPT", data="train.jsonl", out="DIR", scheme="bit-w1a1", steps=1000))

From the command line: ``edgekit quantize CKPT --scheme bit-w1a1 --data train.jsonl --out DIR``,
and on N GPUs of one host ``torchrun --nproc_per_node=N -m edgekit.cli quantize ...``
(DistributedDataParallel). The data is a ``.txt`` (one text per line) or JSONL/CSV with
``text`` (+ ``label`` for classifiers, used only with ``ce``).

Writes ``DIR``: the quantized checkpoint (``edgekit export DIR`` takes it), ``train_state/``
(optimizer, step, RNG, with its sha256: ``resume`` continues from it), ``quant_report.json``
(:class:`~edgekit.build.quant.report.QuantReport`: per stage its speed and, with
``eval_data``, its dev curve; the checkpoint is the stage's best dev state). With ``multi_step`` (BiT),
``DIR/step1-<intermediate>/`` holds the intermediate student, which is then the teacher (and
the initialisation) of the final one. A NaN/inf loss stops training with a
:class:`~edgekit.errors.TrainingError`; nothing is saved after it, so ``DIR`` holds the last
good checkpoint.

The pieces: :mod:`~edgekit.build.quant.options` (the options), :mod:`~edgekit.build.quant.ddp`
(processes), :mod:`~edgekit.build.quant.loop` (one stage), :mod:`~edgekit.build.quant.state`
(resume state), :mod:`~edgekit.build.quant.textdata` (data, eval), :mod:`~edgekit.build.quant.report`.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.build.load import Encoder, load
from edgekit.build.quant import sensitivity, stats
from edgekit.build.quant.api import float_state
from edgekit.build.quant.config import make_config
from edgekit.build.quant.ddp import Dist, deterministic, seed_everything
from edgekit.build.quant.loop import train_stage
from edgekit.build.quant.options import REPORT, STATE_DIR, TrainOptions
from edgekit.build.quant.report import ModelStats, QuantReport, StageReport
from edgekit.build.quant.textdata import Tokens, check_tokenizers, evaluate_tokens, read_training_data

__all__ = ["REPORT", "STATE_DIR", "QuantReport", "TrainOptions", "run"]


def _summary(title: str, stage: StageReport) -> str:
    line = f"{title}: {stage.steps} steps in {stage.seconds:.1f}s, loss {stage.loss_first or 0:.4f} -> {stage.loss_last or 0:.4f}"
    if stage.speed is not None:
        line += f", {stage.speed.samples_per_s:.0f} texts/s ({stage.speed.steps_per_s:.1f} steps/s, {stage.speed.precision})"
    if stage.dev_curve is not None:
        c = stage.dev_curve
        line += f", best dev {c.metric} {c.best_score:.4f} at step {c.best_step}{' (restored)' if c.restored else ''}"
    return line + (f", eval {json.dumps(stage.eval.model_dump())}" if stage.eval is not None else "")


def run(opts: TrainOptions) -> QuantReport:
    """Train (one stage, or BiT's two) and write the checkpoint(s) and ``quant_report.json``."""
    core = {"attention_bits": opts.attention_bits} if opts.attention_bits is not None else {}  # both stages: one attention core
    final_cfg = make_config(opts.scheme, **core)
    inter_cfg = make_config(opts.intermediate, **core) if opts.multi_step else None
    with Dist(opts.device) as dist, deterministic(opts.deterministic):
        seed_everything(opts.seed)
        out = Path(opts.out)
        teacher = load(opts.teacher or opts.model)
        student: Encoder = load(opts.model)
        mixed_budget = {"budget_mb": opts.budget_mb, "mean_bits": opts.mean_bits}
        if opts.budget_mb is not None or opts.mean_bits is not None:  # a budget no plan meets fails here, before any work
            sensitivity.check_budget(student.module, final_cfg, **mixed_budget)
        if opts.teacher:
            check_tokenizers(teacher, student)
        texts, labels = read_training_data(opts.data, student)
        if opts.limit:
            texts, labels = texts[: opts.limit], (labels[: opts.limit] if labels is not None else None)
        evalset = read_training_data(opts.eval_data, student) if opts.eval_data else None
        mixed = None
        if opts.budget_mb is not None or opts.mean_bits is not None:  # mixed precision: bits per part by sensitivity on dev
            final_cfg, mixed = sensitivity.plan_mixed(
                student,
                final_cfg,
                evalset[0],
                **mixed_budget,
                device=dist.device,
                max_length=opts.max_length,
                progress=opts.progress and dist.main,
                say=dist.say,
            )
        classifier = student.info.task == "classifier"
        # tokenized once for every stage (the student's tokenizer; a teacher's must match it)
        train_tokens = Tokens(student, texts, opts.max_length, dist.device)
        dev = (Tokens(student, evalset[0], opts.max_length, dist.device), evalset[1]) if evalset else None
        teacher_eval = None
        if dev and dist.main:
            teacher_eval = evaluate_tokens(teacher, teacher.module.to(dist.device), *dev, dist.device)
        # (scheme, output directory, steps, epochs): BiT's intermediate stage takes the final stage's budget unless given its own
        plan = []
        if inter_cfg is not None:
            own = opts.intermediate_steps is not None or opts.intermediate_epochs is not None
            inter_budget = (opts.intermediate_steps, opts.intermediate_epochs) if own else (opts.steps, opts.epochs)
            plan.append((inter_cfg, out / f"step1-{inter_cfg.scheme}", *inter_budget))
        plan.append((final_cfg, out, opts.steps, opts.epochs))
        stages: list[StageReport] = []
        current_teacher, teacher_name = teacher, "fp32"
        for n, (qcfg, stage_out, steps, epochs) in enumerate(plan, start=1):
            if n > 1:  # BiT multi-step: the previous student teaches, and initialises, the next one
                previous = student
                student = load(opts.model)
                student.module.load_state_dict(float_state(previous.module), strict=True)
                current_teacher, teacher_name = previous, plan[n - 2][0].scheme
            seed_everything(opts.seed + n)
            title = f"[{n}/{len(plan)}] {qcfg.scheme}"
            stage = train_stage(
                current_teacher,
                student,
                qcfg,
                train_tokens,
                labels,
                stage_out,
                opts,
                dist=dist,
                steps=steps,
                epochs=epochs,
                title=title,
                teacher_name=teacher_name,
                dev=dev,
                reference=teacher.module,
            )
            scores = None
            if dev and dist.main:
                scores = evaluate_tokens(student, student.module, *dev, dist.device, reference=teacher.module)
            described = ModelStats.model_validate(stats.describe(student.module, classifier=classifier, seq_len=opts.max_length))
            stage = stage.model_copy(update={"eval": scores, "model": described})
            stages.append(stage)
            dist.say(_summary(title, stage))
        report = QuantReport(
            model=str(student.info.path),
            teacher=str(teacher.info.path),
            data=str(opts.data),
            texts=len(texts),
            device=str(dist.device),
            world_size=dist.world,
            scheme=final_cfg.scheme,
            multi_step=opts.multi_step,
            stages=stages,
            flops_formula=stats.FORMULA,
            teacher_eval=teacher_eval,
            mixed=mixed,
            seed=opts.seed,
            deterministic=opts.deterministic,
        )
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            report.write(out / REPORT)
        dist.barrier()
        return report

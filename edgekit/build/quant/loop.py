"""One training stage: quantize the student, calibrate, distil it from the teacher, save.

The optimizer is AdamW (no weight decay on the quantizers' scales, biases and LayerNorms;
fused on CUDA) with linear warm-up and decay; gradients are clipped to norm 1. Every
``save_every`` steps, and at the end, rank 0 writes the quantized checkpoint and the resume state.

Speed: the texts are tokenized once (:class:`~edgekit.build.quant.textdata.Tokens`, kept on
the GPU), batches hold texts of similar length (``length_buckets``) and are cut to their
longest text, the forward passes and losses run under bf16 autocast on CUDA (``precision``;
the master weights, the optimizer and the quantizers' scale math stay fp32), and the loss
reaches the host only every ``log_every`` steps and before a save or a dev evaluation
(a NaN/inf loss is still caught before anything is saved after it).

More text: ``unlabeled`` and ``augment`` add distillation-only rows to the training set
(:func:`~edgekit.build.quant.textdata.with_extra_text`); batches are drawn from the union and
the label loss counts only the labeled rows (a batch without any gets none).

Dev selection: with a dev set the student is scored every ``eval_every`` steps (accuracy
on labeled classifier data, else mean cosine to the reference model) and the best state
of the stage is restored at its end (``select_best``); the curve goes in the report.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from edgekit.build.load import Encoder
from edgekit.build.quant.api import calibrate, quantize_
from edgekit.build.quant.config import QuantConfig, distill_config
from edgekit.build.quant.ddp import Dist
from edgekit.build.quant.distill import Distiller
from edgekit.build.quant.options import STATE_DIR, TrainOptions
from edgekit.build.quant.progress import StepProgress
from edgekit.build.quant.quantizers import Quantizer
from edgekit.build.quant.report import DevCurve, Speed, StageReport
from edgekit.build.quant.saving import save_quantized
from edgekit.build.quant.state import STATE_FILE, load_state, remove_state, save_state
from edgekit.build.quant.stats import GpuMonitor
from edgekit.build.quant.textdata import IGNORE, Tokens, batch_order, evaluate_tokens, with_extra_text
from edgekit.errors import DataError, TrainingError

BASE_BATCH = 32  # the batch size the default learning rates were tuned at


def learning_rate(opts: TrainOptions, qcfg: QuantConfig) -> float:
    """``lr`` (default by weight bits), times (batch_size / 32) ** p with p from ``lr_scaling``."""
    lr = opts.lr or (5e-4 if qcfg.weight_bits == 1 else 1e-4)
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[opts.lr_scaling]
    return lr * (opts.batch_size / BASE_BATCH) ** power


def use_bf16(opts: TrainOptions, device) -> bool:
    if opts.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return opts.precision == "bf16"


def _optimizer(student, opts: TrainOptions, qcfg: QuantConfig):
    quant_ids = {id(p) for m in student.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in student.parameters():
        if p.requires_grad:
            (no_decay if id(p) in quant_ids or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(student.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=learning_rate(opts, qcfg), fused=fused or None)


def _schedule(opt, total: int, warmup: float):
    warm = max(1, int(warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))


def budget(n_texts: int, world: int, batch: int, steps: int | None, epochs: float | None) -> tuple[int, int]:
    """(total steps, steps per epoch) for ``n_texts`` shared by ``world`` processes; 3 epochs by default."""
    per_epoch = max(1, math.ceil(math.ceil(n_texts / world) / batch))
    total = steps if steps is not None else max(1, math.ceil((epochs if epochs is not None else 3.0) * per_epoch))
    return total, per_epoch


class _Clock:
    """Training seconds, with dev evaluations and saves left out (synchronised on CUDA)."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.total, self._t = 0.0, None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        self._sync()
        self._t = time.perf_counter()

    def stop(self) -> None:
        if self._t is not None:
            self._sync()
            self.total += time.perf_counter() - self._t
            self._t = None


def train_stage(
    teacher: Encoder,
    student: Encoder,
    qcfg: QuantConfig,
    texts: list[str] | Tokens,
    labels: list[int] | None,
    out: Path,
    opts: TrainOptions,
    *,
    dist: Dist,
    steps: int | None = None,
    epochs: float | None = None,
    title: str | None = None,
    teacher_name: str = "fp32",
    dev: tuple[list[str] | Tokens, list[int] | None] | None = None,
    reference=None,
) -> StageReport:
    """Quantize ``student.module`` in place with ``qcfg`` (unless already) and distil it from ``teacher``.

    ``dev``: (texts, labels) scored every ``opts.eval_every`` steps; ``reference``: the model the
    cosine is taken to where there is no accuracy to score (default: ``teacher``).
    Saves the quantized checkpoint to ``out`` (and resume state under ``out/train_state``)."""
    device = dist.device
    dcfg = distill_config(qcfg, opts.distill, ce=opts.ce)
    if dcfg.ce and labels is None:
        raise DataError(f"{opts.data}: distill.ce > 0 needs labeled records (text + label)", hint="use labeled JSONL/CSV or set ce to 0")
    tokens = texts if isinstance(texts, Tokens) else Tokens(student, texts, opts.max_length, device)
    corpus = None
    if opts.unlabeled or opts.augment:  # distillation-only rows (label IGNORE), from the float student's vocabulary and embeddings
        tokens, labels, corpus = with_extra_text(tokens, labels, student, opts, main=dist.main, say=dist.say)
    if not any(isinstance(m, Quantizer) for m in student.module.modules()):
        quantize_(student.module, qcfg)
    module, tmodule = student.module.to(device), teacher.module.to(device).eval()
    for p in tmodule.parameters():
        p.requires_grad_(False)
    total, per_epoch = budget(len(tokens), dist.world, opts.batch_size, steps, epochs)
    pad_to_max = opts.padding == "max_length"

    def batches(epoch: int) -> list[list[int]]:
        return batch_order(
            tokens.lengths, opts.batch_size, seed=opts.seed, epoch=epoch, rank=dist.rank, world=dist.world, buckets=opts.length_buckets
        )

    # Calibrate activation scales on the first batches (rank 0's values reach every rank through DDP).
    first = [tokens.batch(b, device, pad_to_max=pad_to_max)[0] for b in batches(0)[: opts.calib_batches]]
    module.eval()
    calibrate(module, first)
    module.train()
    opt = _optimizer(module, opts, qcfg)
    sched = _schedule(opt, total, opts.warmup)
    state_dir = out / STATE_DIR
    start = load_state(state_dir, module, opt, sched, qcfg) if opts.resume and (state_dir / STATE_FILE).exists() else 0
    if start:
        dist.say(f"resuming {qcfg.scheme} from step {start} ({state_dir})")
    wrapped = module
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    bf16 = use_bf16(opts, device)
    history: list[float] = []
    pending: list[tuple[int, torch.Tensor]] = []
    last_saved = start if start else None
    label_tensor = torch.tensor(labels, device=device) if labels is not None else None
    has_label = [y != IGNORE for y in labels] if labels is not None else []  # a batch of distillation-only rows gets no label loss
    clock = _Clock(device)
    seen = {"samples": 0, "real": 0, "computed": 0, "steps": 0}
    last_parts: dict[str, torch.Tensor] = {}  # the last step's loss parts, on the device until a flush shows them

    def flush() -> None:
        """Bring the pending losses to the host (one sync); stop on the first non-finite one."""
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).tolist()
        bad = next(((s, v) for (s, _), v in zip(pending, values) if not math.isfinite(v)), None)
        pending.clear()
        if dist.any(bad is not None):
            where = f"{out} (step {last_saved})" if last_saved is not None else "none (no checkpoint was saved yet)"
            at, value = bad if bad is not None else (step, float("nan"))
            raise TrainingError(
                f"{qcfg.scheme}: loss is {value} at step {at}; stopped. Last good checkpoint: {where}",
                hint="lower --lr, or resume from the last checkpoint with --resume",
            )
        history.extend(values)
        bar.update(step, values[-1], {k: float(v) for k, v in last_parts.items()} if bar.enabled else {})

    def save(step_now: int) -> None:
        nonlocal last_saved
        if dist.main:
            save_quantized(
                module,
                student.tokenizer,
                out,
                source=student.info.path,
                dtype=torch.float16 if opts.save_dtype == "float16" else None,
                extra={"step": step_now, "total_steps": total},
            )
            save_state(state_dir, step_now, module, opt, sched, qcfg, total)
        dist.barrier()
        last_saved = step_now

    selector = _DevSelector(student, module, dev, reference if reference is not None else tmodule, opts, device, total)
    step = start
    bar = StepProgress(dist.main and opts.progress, total, start, title or qcfg.scheme, opts.log_every)
    with bar, GpuMonitor(device) as monitor, Distiller(tmodule, wrapped, dcfg, task=student.info.task) as distiller:
        epoch = step // per_epoch
        clock.start()
        while step < total:
            for k, b in enumerate(batches(epoch)):
                if epoch * per_epoch + k < step:  # resume: skip the batches already seen
                    continue
                if step >= total:
                    break
                inputs, mask = tokens.batch(b, device, pad_to_max=pad_to_max)
                y = label_tensor[b] if label_tensor is not None and any(has_label[i] for i in b) else None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, last_parts = distiller.loss(inputs, mask, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                pending.append((step, loss.detach().float()))
                seen["steps"] += 1
                seen["samples"] += len(b)
                seen["real"] += sum(tokens.lengths[i] for i in b)
                seen["computed"] += len(b) * inputs[0].shape[1]
                saving = step % opts.save_every == 0 and step < total
                scoring = selector.due(step)
                if saving or scoring or step % opts.log_every == 0:
                    flush()
                if saving or scoring:
                    clock.stop()
                    if saving:
                        save(step)
                    if scoring:
                        selector.score(step)
                    clock.start()
            epoch += 1
        flush()
        clock.stop()
    if selector.enabled and (not selector.points or selector.points[-1][0] != step):
        selector.score(step)  # the last state is always a candidate
    curve = selector.finish(step)
    save(step)
    if not opts.keep_state and dist.main:
        remove_state(state_dir)
    module.eval()
    head = history[: max(1, len(history) // 10)]
    tail = history[-max(1, len(history) // 10) :]
    secs = max(clock.total, 1e-9)
    speed = Speed(
        train_seconds=round(clock.total, 3),
        steps_per_s=round(seen["steps"] / secs, 3),
        samples_per_s=round(seen["samples"] * dist.world / secs, 2),
        tokens_per_s=round(seen["real"] * dist.world / secs, 1),
        real_token_share=round(seen["real"] / max(seen["computed"], 1), 4),
        precision="bf16" if bf16 else "fp32",
        padding=opts.padding,
        length_buckets=opts.length_buckets,
        **monitor.summary(),
    )
    return StageReport(
        scheme=qcfg.scheme,
        config=qcfg,
        distill=dcfg,
        out=str(out),
        steps=total,
        start_step=start,
        epochs=total / per_epoch,
        seconds=round(clock.total, 2),
        lr=learning_rate(opts, qcfg),
        loss_first=sum(head) / len(head) if history else None,
        loss_last=sum(tail) / len(tail) if history else None,
        batch_size=opts.batch_size,
        world_size=dist.world,
        teacher=teacher_name,
        speed=speed,
        dev_curve=curve,
        corpus=corpus,
    )


class _DevSelector:
    """Scores the student on the dev set every ``eval_every`` steps and keeps the best state (in memory)."""

    def __init__(self, student: Encoder, module, dev, reference, opts: TrainOptions, device, total: int) -> None:
        self.enabled = dev is not None
        self.module, self.device, self.student = module, device, student
        self.points: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict] | None = None
        if not self.enabled:
            return
        texts, labels = dev
        self.tokens = texts if isinstance(texts, Tokens) else Tokens(student, texts, opts.max_length, device)
        self.labels = labels if labels is not None and student.info.task == "classifier" else None
        self.reference = None if self.labels is not None else reference
        self.metric = "accuracy" if self.labels is not None else "cosine_to_teacher"
        self.every = opts.eval_every or max(1, total // 10)
        self.keep = opts.select_best

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def score(self, step: int) -> None:
        if not self.enabled:
            return
        result = evaluate_tokens(self.student, self.module, self.tokens, self.labels, self.device, reference=self.reference)
        value = result.accuracy if self.metric == "accuracy" else result.cosine_to_teacher
        self.points.append((step, round(float(value), 6)))
        if self.keep and (self.best is None or value >= self.best[1]):  # ties go to the later (longer-trained) state
            state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            self.best = (step, float(value), state)

    def finish(self, last_step: int) -> DevCurve | None:
        """Restore the best state (when it is not the last) and return the curve."""
        if not self.enabled or not self.points:
            return None
        if self.best is None:  # selection off: the last state is kept
            step, value = self.points[-1]
        else:
            step, value, state = self.best
            if step != last_step:
                self.module.load_state_dict(state)
        self.best = None
        return DevCurve(
            metric=self.metric, every=self.every, points=self.points, best_step=step, best_score=value, restored=step != last_step
        )

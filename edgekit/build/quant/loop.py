"""One training stage: quantize the student, calibrate, distil it from the teacher, save.

The optimizer is AdamW (no weight decay on the quantizers' scales, biases and LayerNorms)
with linear warm-up and decay; gradients are clipped to norm 1. Every ``save_every``
steps, and at the end, rank 0 writes the quantized checkpoint and the resume state.
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
from edgekit.build.quant.report import StageReport
from edgekit.build.quant.saving import save_quantized
from edgekit.build.quant.state import STATE_FILE, load_state, remove_state, save_state
from edgekit.build.quant.textdata import encode
from edgekit.errors import DataError, TrainingError


def learning_rate(opts: TrainOptions, qcfg: QuantConfig) -> float:
    return opts.lr or (5e-4 if qcfg.weight_bits == 1 else 1e-4)


def _optimizer(student, opts: TrainOptions, qcfg: QuantConfig):
    quant_ids = {id(p) for m in student.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in student.parameters():
        if p.requires_grad:
            (no_decay if id(p) in quant_ids or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate(opts, qcfg))


def _schedule(opt, total: int, warmup: float):
    warm = max(1, int(warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))


def budget(n_texts: int, world: int, batch: int, steps: int | None, epochs: float | None) -> tuple[int, int]:
    """(total steps, steps per epoch) for ``n_texts`` shared by ``world`` processes; 3 epochs by default."""
    per_epoch = max(1, math.ceil(math.ceil(n_texts / world) / batch))
    total = steps if steps is not None else max(1, math.ceil((epochs if epochs is not None else 3.0) * per_epoch))
    return total, per_epoch


def train_stage(
    teacher: Encoder,
    student: Encoder,
    qcfg: QuantConfig,
    texts: list[str],
    labels: list[int] | None,
    out: Path,
    opts: TrainOptions,
    *,
    dist: Dist,
    steps: int | None = None,
    epochs: float | None = None,
    title: str | None = None,
    teacher_name: str = "fp32",
) -> StageReport:
    """Quantize ``student.module`` in place with ``qcfg`` (unless already) and distil it from ``teacher``.

    Saves the quantized checkpoint to ``out`` (and resume state under ``out/train_state``)."""
    device = dist.device
    dcfg = distill_config(qcfg, opts.distill, ce=opts.ce)
    if dcfg.ce and labels is None:
        raise DataError(f"{opts.data}: distill.ce > 0 needs labeled records (text + label)", hint="use labeled JSONL/CSV or set ce to 0")
    if not any(isinstance(m, Quantizer) for m in student.module.modules()):
        quantize_(student.module, qcfg)
    module, tmodule = student.module.to(device), teacher.module.to(device).eval()
    for p in tmodule.parameters():
        p.requires_grad_(False)
    total, per_epoch = budget(len(texts), dist.world, opts.batch_size, steps, epochs)
    sampler = torch.utils.data.DistributedSampler(range(len(texts)), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=opts.seed)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        idx = list(sampler)
        for i in range(0, len(idx), opts.batch_size):
            yield idx[i : i + opts.batch_size]

    # Calibrate activation scales on the first batches (rank 0's values reach every rank through DDP).
    first = [encode(student, [texts[j] for j in b], device, opts.max_length)[0] for b, _ in zip(batches(0), range(opts.calib_batches))]
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
    history: list[float] = []
    last_saved = start if start else None
    label_tensor = torch.tensor(labels) if labels is not None else None

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

    t0 = time.time()
    step = start
    bar = StepProgress(dist.main and opts.progress, total, start, title or qcfg.scheme, opts.log_every)
    with bar, Distiller(tmodule, wrapped, dcfg, task=student.info.task) as distiller:
        epoch = step // per_epoch
        while step < total:
            for k, b in enumerate(batches(epoch)):
                if epoch * per_epoch + k < step:  # resume: skip the batches already seen
                    continue
                if step >= total:
                    break
                inputs, mask = encode(student, [texts[j] for j in b], device, opts.max_length)
                y = label_tensor[b].to(device) if label_tensor is not None else None
                loss, parts = distiller.loss(inputs, mask, y)
                value = float(loss.detach())
                if dist.any(not math.isfinite(value)):
                    where = f"{out} (step {last_saved})" if last_saved is not None else "none (no checkpoint was saved yet)"
                    raise TrainingError(
                        f"{qcfg.scheme}: loss is {value} at step {step + 1}; stopped. Last good checkpoint: {where}",
                        hint="lower --lr, or resume from the last checkpoint with --resume",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                history.append(value)
                bar.update(step, value, parts)
                if step % opts.save_every == 0 and step < total:
                    save(step)
            epoch += 1
    seconds = time.time() - t0
    save(step)
    if not opts.keep_state and dist.main:
        remove_state(state_dir)
    module.eval()
    head = history[: max(1, len(history) // 10)]
    tail = history[-max(1, len(history) // 10) :]
    return StageReport(
        scheme=qcfg.scheme,
        config=qcfg,
        distill=dcfg,
        out=str(out),
        steps=total,
        start_step=start,
        epochs=total / per_epoch,
        seconds=round(seconds, 2),
        lr=learning_rate(opts, qcfg),
        loss_first=sum(head) / len(head) if history else None,
        loss_last=sum(tail) / len(tail) if history else None,
        batch_size=opts.batch_size,
        world_size=dist.world,
        teacher=teacher_name,
    )

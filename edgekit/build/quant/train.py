"""Quantization-aware training with distillation from the full-precision model.

    python -m edgekit.build.quant.train --model CKPT --scheme bit-w1a1 --data train.jsonl --out DIR \\
        [--steps N | --epochs E] [--multi-step [--intermediate bit-w1a8]] [--eval dev.jsonl] [--resume]
    torchrun --nproc_per_node=N -m edgekit.build.quant.train ...     # DistributedDataParallel, one host

From Python: ``run(TrainOptions(...)) -> report dict``. The data is a ``.txt`` (one text per
line) or JSONL/CSV with ``text`` (+ ``label`` for classifiers, used only with ``--ce``).

Writes ``DIR``: the quantized checkpoint (``edgekit export DIR`` takes it), ``train_state/``
(optimizer, step, RNG: ``--resume`` continues from it), ``quant_report.json``. With
``--multi-step`` (BiT), ``DIR/step1-<intermediate>/`` holds the intermediate student, which
is then the teacher (and the initialisation) of the final one.
A NaN/inf loss stops training with a :class:`~edgekit.errors.TrainingError`; nothing is
saved after it, so ``DIR`` holds the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Literal

import torch

from edgekit.build.load import Encoder, load
from edgekit.build.quant import distill, stats
from edgekit.build.quant._compat import BaseModel, ConfigDict
from edgekit.build.quant.api import calibrate, float_state, quantize_
from edgekit.build.quant.config import QuantConfig, make_config
from edgekit.build.quant.distill import DistillConfig, Distiller
from edgekit.build.quant.quantizers import Quantizer
from edgekit.build.quant.saving import save_quantized
from edgekit.deploy import data as datafiles
from edgekit.errors import ConfigError, DataError, EdgekitError, TrainingError

STATE_DIR = "train_state"
REPORT = "quant_report.json"


class TrainOptions(BaseModel):
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
    device: str = "auto"
    save_dtype: Literal["float32", "float16"] = "float32"
    calib_batches: int = 4
    log_every: int = 20
    progress: bool = True
    keep_state: bool = True  # keep train_state/ after a finished stage
    limit: int | None = None  # use only the first N training texts (smoke runs)

    def model_post_init(self, context) -> None:  # noqa: D102
        for name in ("steps", "intermediate_steps", "batch_size", "max_length", "save_every", "calib_batches", "log_every", "limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"train.{name}: must be a positive integer (got {v!r})")
        for name in ("epochs", "intermediate_epochs", "lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"train.{name}: must be > 0 (got {v!r})")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"train.device: must be auto, cpu or cuda (got {self.device!r})")


# ----------------------------------------------------------------------------- environment


class _Dist:
    """torchrun's environment: rank, world size, device; a no-op outside torchrun."""

    def __init__(self, device_opt: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        cuda = torch.cuda.is_available() if device_opt == "auto" else device_opt.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise ConfigError("train.device: cuda asked but no CUDA device is visible", hint="use --device cpu")
        if cuda:
            self.device = torch.device(f"cuda:{self.local_rank}" if self.enabled or device_opt in ("auto", "cuda") else device_opt)
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
        self._owns_group = False
        if self.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
            self._owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _Progress:
    """rich progress bar with the loss, or plain lines where rich is missing or off."""

    def __init__(self, enabled: bool, total: int, start: int, title: str, log_every: int) -> None:
        self.enabled, self.total, self.title, self.log_every = enabled, total, title, log_every
        self._bar = None
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        except ImportError:
            return
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(title, total=total, completed=start, loss="-")

    def update(self, step: int, loss: float, parts: dict) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}")
        elif step % self.log_every == 0 or step == self.total:
            detail = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
            print(f"{self.title} step {step}/{self.total} loss {loss:.4f} ({detail})", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _say(dist: _Dist | None, message: str) -> None:
    if dist is None or dist.main:
        print(message, flush=True)


# ----------------------------------------------------------------------------- data


def read_training_data(path: str | Path, encoder: Encoder) -> tuple[list[str], list[int] | None]:
    """Texts (and label ids, for a labeled classifier file); DataError for empty/unreadable files."""
    path = Path(path)
    kind = datafiles.kind(path)
    if kind == "labeled" and encoder.info.task == "classifier":
        labeled = datafiles.read_labeled(path, list(encoder.info.labels or ()))
        return labeled.texts, labeled.labels
    if kind == "pairs":
        queries, docs = datafiles.read_pairs(path)
        return queries + docs, None
    return datafiles.read_texts(path), None


def encode(encoder: Encoder, texts: list[str], device, max_length: int) -> tuple[tuple, torch.Tensor]:
    enc = encoder.tokenizer(texts, padding=True, truncation=True, max_length=min(max_length, encoder.info.max_length), return_tensors="pt")
    inputs = tuple(enc[name].to(device) for name in encoder.spec.input_names)
    return inputs, enc["attention_mask"].to(device)


def check_tokenizers(teacher: Encoder, student: Encoder) -> None:
    """The teacher must tokenize exactly as the student does (same ids for the same text)."""
    a, b = teacher.tokenizer, student.tokenizer
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb or a.pad_token_id != b.pad_token_id or a.cls_token_id != b.cls_token_id:
        diff = f"vocabulary {len(va)} vs {len(vb)} tokens" if len(va) != len(vb) else "same size, other tokens or special ids"
        raise ConfigError(
            f"teacher {teacher.info.path} and student {student.info.path} tokenize differently ({diff})",
            hint="distil from a teacher with the student's tokenizer",
        )


@torch.no_grad()
def evaluate(
    encoder: Encoder, module, texts: list[str], labels: list[int] | None, device, *, max_length: int = 128, batch: int = 128, reference=None
) -> dict:
    """Accuracy (labeled classifier data) and/or mean cosine to ``reference``'s outputs (any model)."""
    was = module.training
    module.eval()
    correct, cos, n = 0, 0.0, 0
    for i in range(0, len(texts), batch):
        inputs, _ = encode(encoder, texts[i : i + batch], device, max_length)
        out = module(*inputs).float()
        if labels is not None and encoder.info.task == "classifier":
            correct += int((out.argmax(-1).cpu() == torch.tensor(labels[i : i + batch])).sum())
        if reference is not None:
            ref = reference(*inputs).float()
            cos += float(torch.nn.functional.cosine_similarity(out, ref, dim=-1).sum())
        n += out.shape[0]
    module.train(was)
    result: dict = {"texts": n}
    if labels is not None and encoder.info.task == "classifier":
        result["accuracy"] = correct / max(n, 1)
    if reference is not None:
        result["cosine_to_teacher"] = cos / max(n, 1)
    return result


# ----------------------------------------------------------------------------- one stage


def _lr(opts: TrainOptions, qcfg: QuantConfig) -> float:
    return opts.lr or (5e-4 if qcfg.weight_bits == 1 else 1e-4)


def _optimizer(student, opts: TrainOptions, qcfg: QuantConfig):
    quant_ids = {id(p) for m in student.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for _name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in quant_ids or p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=_lr(opts, qcfg)
    )


def _schedule(opt, total: int, warmup: float):
    warm = max(1, int(warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))


def _budget(n_texts: int, world: int, batch: int, steps: int | None, epochs: float | None) -> tuple[int, int]:
    per_epoch = max(1, math.ceil(math.ceil(n_texts / world) / batch))
    total = steps if steps is not None else max(1, math.ceil((epochs if epochs is not None else 3.0) * per_epoch))
    return total, per_epoch


def _save_state(path: Path, step: int, student, opt, sched, qcfg: QuantConfig, total: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "total": total,
        "scheme": qcfg.model_dump(),
        "model": student.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / "state.pt")


def _load_state(path: Path, student, opt, sched, qcfg: QuantConfig) -> int:
    f = path / "state.pt"
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise TrainingError(f"{f}: cannot resume from it ({str(err).splitlines()[0]})", hint="delete it to start over") from err
    if state.get("scheme") != qcfg.model_dump():
        raise ConfigError(
            f"{f}: saved for scheme {state.get('scheme', {}).get('scheme')!r}, not {qcfg.scheme!r}",
            hint="use another --out, or the same scheme",
        )
    student.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def train_stage(
    teacher: Encoder,
    student: Encoder,
    qcfg: QuantConfig,
    texts: list[str],
    labels: list[int] | None,
    out: Path,
    opts: TrainOptions,
    *,
    dist: _Dist,
    steps: int | None = None,
    epochs: float | None = None,
    title: str | None = None,
) -> dict:
    """Quantize ``student.module`` in place with ``qcfg`` (unless already) and distil it from ``teacher``.

    Saves the quantized checkpoint to ``out`` (and resume state under ``out/train_state``)."""
    device = dist.device
    dcfg = opts.distill or distill.DEFAULTS[qcfg.method]
    if dcfg.ce and labels is None:
        raise DataError(f"{opts.data}: distill.ce > 0 needs labeled records (text + label)", hint="use labeled JSONL/CSV or set ce to 0")
    if not any(isinstance(m, Quantizer) for m in student.module.modules()):
        quantize_(student.module, qcfg)
    module, tmodule = student.module.to(device), teacher.module.to(device).eval()
    for p in tmodule.parameters():
        p.requires_grad_(False)
    total, per_epoch = _budget(len(texts), dist.world, opts.batch_size, steps, epochs)
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
    start = _load_state(state_dir, module, opt, sched, qcfg) if opts.resume and (state_dir / "state.pt").exists() else 0
    if start:
        _say(dist, f"resuming {qcfg.scheme} from step {start} ({state_dir})")
    wrapped = module
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    bar = _Progress(dist.main and opts.progress, total, start, title or qcfg.scheme, opts.log_every)
    history: list[float] = []
    last_saved = start if start else None
    t0 = time.time()
    step = start
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
            _save_state(state_dir, step_now, module, opt, sched, qcfg, total)
        dist.barrier()
        last_saved = step_now

    try:
        with Distiller(tmodule, wrapped, dcfg, task=student.info.task) as distiller:
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
    finally:
        bar.close()
    seconds = time.time() - t0
    save(step)
    if not opts.keep_state and dist.main and (state_dir / "state.pt").exists():
        (state_dir / "state.pt").unlink()
    module.eval()
    head = history[: max(1, len(history) // 10)]
    tail = history[-max(1, len(history) // 10) :]
    return {
        "scheme": qcfg.scheme,
        "config": qcfg.model_dump(),
        "distill": dcfg.model_dump(),
        "out": str(out),
        "steps": total,
        "start_step": start,
        "epochs": total / per_epoch,
        "seconds": round(seconds, 2),
        "lr": _lr(opts, qcfg),
        "loss_first": sum(head) / len(head) if history else None,
        "loss_last": sum(tail) / len(tail) if history else None,
        "batch_size": opts.batch_size,
        "world_size": dist.world,
    }


# ----------------------------------------------------------------------------- whole run


def _fresh_student(opts: TrainOptions) -> Encoder:
    return load(opts.model)


def run(opts: TrainOptions) -> dict:
    """Train (one stage, or BiT's two) and write the checkpoint(s) and ``quant_report.json``."""
    final_cfg = make_config(opts.scheme)
    inter_cfg = make_config(opts.intermediate) if opts.multi_step else None
    dist = _Dist(opts.device)
    try:
        _seed(opts.seed)
        out = Path(opts.out)
        teacher = load(opts.teacher or opts.model)
        student = _fresh_student(opts)
        if opts.teacher:
            check_tokenizers(teacher, student)
        texts, labels = read_training_data(opts.data, student)
        if opts.limit:
            texts, labels = texts[: opts.limit], (labels[: opts.limit] if labels is not None else None)
        evalset = read_training_data(opts.eval_data, student) if opts.eval_data else None
        classifier = student.info.task == "classifier"
        report: dict = {
            "model": str(student.info.path),
            "teacher": str(teacher.info.path),
            "data": str(opts.data),
            "texts": len(texts),
            "device": str(dist.device),
            "world_size": dist.world,
            "scheme": final_cfg.scheme,
            "multi_step": opts.multi_step,
            "stages": [],
            "flops_formula": stats.FORMULA,
        }
        if evalset and dist.main:
            report["teacher_eval"] = evaluate(teacher, teacher.module.to(dist.device), *evalset, dist.device, max_length=opts.max_length)
        plan = [(inter_cfg, out / f"step1-{inter_cfg.scheme}", opts.intermediate_steps, opts.intermediate_epochs)] if inter_cfg else []
        plan.append((final_cfg, out, opts.steps, opts.epochs))
        if inter_cfg and opts.intermediate_steps is None and opts.intermediate_epochs is None:
            plan[0] = (inter_cfg, plan[0][1], opts.steps, opts.epochs)
        current_teacher = teacher
        for n, (qcfg, stage_out, steps, epochs) in enumerate(plan, start=1):
            if n > 1:  # BiT multi-step: the previous student teaches, and initialises, the next one
                previous = student
                student = _fresh_student(opts)
                student.module.load_state_dict(float_state(previous.module), strict=True)
                current_teacher = previous
            _seed(opts.seed + n)
            title = f"[{n}/{len(plan)}] {qcfg.scheme}"
            stage = train_stage(
                current_teacher, student, qcfg, texts, labels, stage_out, opts, dist=dist, steps=steps, epochs=epochs, title=title
            )
            stage["teacher"] = "fp32" if n == 1 else plan[n - 2][0].scheme
            if evalset and dist.main:
                stage["eval"] = evaluate(
                    student, student.module, *evalset, dist.device, max_length=opts.max_length, reference=teacher.module
                )
            stage["model"] = stats.describe(student.module, classifier=classifier, seq_len=opts.max_length)
            report["stages"].append(stage)
            _say(
                dist,
                f"{title}: {stage['steps']} steps in {stage['seconds']:.1f}s, loss {stage['loss_first'] or 0:.4f} -> {stage['loss_last'] or 0:.4f}"
                + (f", eval {json.dumps(stage['eval'])}" if "eval" in stage else ""),
            )
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / REPORT).write_text(json.dumps(report, indent=1))
        dist.barrier()
        return report
    finally:
        dist.close()


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m edgekit.build.quant.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="trained float checkpoint directory (the student's start and default teacher)")
    ap.add_argument("--scheme", default="bit-w1a1", help="quantization scheme (e.g. ternary-w2a8, bit-w1a8, bit-w1a1, bibert-w1a1)")
    ap.add_argument("--data", required=True, help="training texts: .txt, or .jsonl/.csv with text (+ label)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--teacher", help="teacher checkpoint (default: --model)")
    ap.add_argument("--eval", dest="eval_data", help="labeled eval data: accuracy at each stage")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int)
    budget.add_argument("--epochs", type=float)
    ap.add_argument("--multi-step", action="store_true", help="BiT: teacher -> --intermediate student -> final student")
    ap.add_argument("--intermediate", default="bit-w1a8")
    ap.add_argument("--intermediate-steps", type=int)
    ap.add_argument("--intermediate-epochs", type=float)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/train_state if present")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--ce", type=float, help="weight of cross entropy with the labels (default 0: distillation only)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        dcfg = None
        if args.ce:
            dcfg = distill.DEFAULTS[make_config(args.scheme).method].model_copy(update={"ce": args.ce})
        opts = TrainOptions(
            model=args.model,
            scheme=args.scheme,
            data=args.data,
            out=args.out,
            teacher=args.teacher,
            eval_data=args.eval_data,
            steps=args.steps,
            epochs=args.epochs,
            multi_step=args.multi_step,
            intermediate=args.intermediate,
            intermediate_steps=args.intermediate_steps,
            intermediate_epochs=args.intermediate_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            max_length=args.max_length,
            seed=args.seed,
            save_every=args.save_every,
            resume=args.resume,
            device=args.device,
            save_dtype=args.save_dtype,
            distill=dcfg,
            progress=not args.no_progress,
        )
        run(opts)
    except EdgekitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

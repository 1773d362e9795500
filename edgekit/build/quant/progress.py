"""Training progress: a rich progress bar with the loss on a terminal, plain lines otherwise (logs)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """``update(step, loss, parts)`` after each optimizer step; a no-op when disabled (other ranks, ``progress=False``)."""

    def __init__(self, enabled: bool, total: int, start: int, title: str, log_every: int) -> None:
        self.enabled, self.total, self.title, self.log_every = enabled, total, title, log_every
        self._bar: Progress | None = None
        if enabled and Console().is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(title, total=total, completed=start, loss="-")

    def update(self, step: int, loss: float, parts: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}")
        elif step % self.log_every == 0 or step == self.total:
            detail = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
            print(f"{self.title} step {step}/{self.total} loss {loss:.4f} ({detail})", flush=True)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

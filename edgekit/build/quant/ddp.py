"""The training processes: device choice, torchrun's process group, seeds, rank-0 output.

Under ``torchrun --nproc_per_node=N -m edgekit.cli quantize ...`` every process reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins one process group (NCCL on CUDA, gloo on
the CPU); outside torchrun :class:`Dist` is a single process and every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import random

from edgekit.errors import ConfigError


class Dist:
    """torchrun's environment: rank, world size, device; a no-op outside torchrun.

    A context manager: the process group it created is destroyed on exit."""

    def __init__(self, device_opt: str) -> None:
        import torch

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

    def __enter__(self) -> Dist:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch

            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """``flag`` of any rank (so every rank stops together)."""
        if not self.enabled:
            return flag
        import torch

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def say(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.main:
            print(message, flush=True)

    def close(self) -> None:
        import torch

        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._owns_group = False


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the process that may write shared files. Torch-free."""
    return int(os.environ.get("RANK", "0")) == 0


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(enabled: bool):
    """Deterministic kernels while training (two runs of one seed give the same weights on one machine).

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first call in the process (set here when unset);
    ops with no deterministic kernel warn (``warn_only``) rather than stop a run. The previous settings
    come back on exit."""
    if not enabled:
        yield
        return
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = bench

"""The final training in N processes (DDP under torchrun): one model, each process a slice of every batch.

``train_processes`` (a tracked param: the results depend on it) sets N. With N > 1 the train stage
starts itself again under ``torchrun --standalone --nproc-per-node=N`` (``relaunch``); every process
then joins the group (``join``: gloo on CPUs, NCCL on GPUs, one GPU per process) and:

- draws the same permutation from the same CPU generator and takes its contiguous slice of each
  global batch, so together the processes train on exactly the batches of one process;
- scales its loss so that DDP's gradient average is the gradient of the global batch's mean loss;
- validates its slice of the valid split and all-reduces the sums, so every process takes the same
  early-stopping and schedule decisions;
- keeps its own dropout and augmentation stream (process 0's is the one-process stream).

BatchNorm normalises each slice with its own statistics (DDP's default), and the sums run in
another order: that is why N is a param. Process 0 alone writes outputs, checkpoints and monitors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from foldwise.core.errors import UserError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes; ``Group()`` is the one-process default."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Process 0: the one that writes."""
        return self.rank == 0

    def total(self, *values: float | torch.Tensor) -> list[float]:
        """The sums over every process of ``values`` (float64, so counts stay exact)."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values])
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def shard(self, n: int) -> np.ndarray:
        """This process's contiguous share of ``range(n)`` (sizes differ by at most one)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def share_buffers(self, model: nn.Module) -> None:
        """Process 0's BatchNorm statistics to every process, so all validate the model 0 saves."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)


SINGLE = Group()


def launched() -> bool:
    """Whether torchrun started this process (it sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def relaunch(processes: int, argv: Sequence[str]) -> int:
    """Run this stage script again under torchrun with ``processes`` processes; their exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               *argv]
    print(f"train_processes={processes}: {' '.join(command[1:4])} ...", file=sys.stderr, flush=True)
    return subprocess.call(command)


def join(processes: int, device: torch.device) -> tuple[Group, torch.device]:
    """This process's group and device (``cuda:LOCAL_RANK`` on GPUs) for ``processes`` processes."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1
    if world != processes:
        raise UserError(f"train_processes is {processes}, but torchrun started {world} processes; run the "
                        f"stage without torchrun (it starts itself under it) or with --nproc-per-node={processes}")
    if world == 1:
        return SINGLE, device
    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise UserError(f"train_processes={processes}, but this machine has {torch.cuda.device_count()} "
                            f"GPUs: one process per GPU; lower train_processes")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), world), device


def leave(group: Group) -> None:
    """Leave the process group (after the last collective)."""
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()

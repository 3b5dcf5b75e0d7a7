"""Optimisers, learning-rate schedules (with warm-up) and the L1 penalty, from params."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from foldwise.core.params import Params


def _parameter_groups(model: nn.Module, p: Params) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """The parameters, or with ``bn_lr_factor`` != 1 two groups: BatchNorm's weights and biases at
    ``lr`` x that factor (a higher rate for them is one of the CIFAR-10 speed runs' tricks), the rest
    at ``lr``. A model without BatchNorm parameters keeps one group: the factor has nothing to act on."""
    params = list(model.parameters())
    if p.bn_lr_factor == 1:
        return params
    norms = {id(t) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for t in m.parameters()}
    if not norms:
        return params
    return [{"params": [t for t in params if id(t) not in norms]},
            {"params": [t for t in params if id(t) in norms], "lr": p.lr * p.bn_lr_factor}]


def make_optimizer(model: nn.Module, p: Params) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW with ``lr`` and ``weight_decay``; BatchNorm's
    parameters at ``lr`` x ``bn_lr_factor``.

    The fused implementation (one kernel per step for all parameters) where
    torch has it: on 2 CPU cores it made an MLP epoch at batch 64 about 1.4x
    faster than the default per-parameter loop (benchmarks/history.md).
    """
    tensors = list(model.parameters())
    fused = all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors) or None
    params = _parameter_groups(model, p)
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov and p.momentum > 0,
                               weight_decay=p.weight_decay, fused=fused)
    cls = torch.optim.Adam if p.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=p.lr, weight_decay=p.weight_decay, fused=fused)


WARMUP_START = 0.01  # warm-up starts at lr x this and rises linearly to lr


class Schedule:
    """The learning-rate schedule with optional linear warm-up, stepped after every batch.

    ``onecycle`` is torch's OneCycleLR (its warm-up phase lasts ``warmup_epochs``
    when set, else 30% of training); ``none``, ``step`` and ``cosine`` are
    per-batch factors of ``lr`` (``step`` decays by ``gamma`` every
    ``step_size`` epochs, as StepLR; ``cosine`` anneals to 0 after warm-up, as
    CosineAnnealingLR); ``plateau`` is ReduceLROnPlateau on the validation
    loss, stepped after every epoch once warm-up is over.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, p: Params, steps_per_epoch: int) -> None:
        total = p.epochs * steps_per_epoch
        self.warmup = p.warmup_epochs * steps_per_epoch
        self.steps = 0
        self.plateau = None
        if p.scheduler == "onecycle":
            kwargs = {"pct_start": self.warmup / total} if self.warmup else {}
            self.per_batch = torch.optim.lr_scheduler.OneCycleLR(  # each group's peak is its own lr
                optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total, **kwargs)
            return
        warmup, decay_every = self.warmup, p.step_size * steps_per_epoch

        def factor(step: int) -> float:
            ramp = min(1.0, WARMUP_START + (1 - WARMUP_START) * step / warmup) if warmup else 1.0
            if p.scheduler == "step":
                return ramp * p.gamma ** (step // decay_every)
            if p.scheduler == "cosine":
                return ramp * 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, total - warmup)))
            return ramp

        self.per_batch = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        if p.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=p.gamma, patience=p.plateau_patience)

    def after_batch(self) -> None:
        if self.plateau is None or self.steps < self.warmup:
            self.per_batch.step()
        self.steps += 1

    def after_epoch(self, valid_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.warmup:
            self.plateau.step(valid_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "per_batch": self.per_batch.state_dict(),
                "plateau": None if self.plateau is None else self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.per_batch.load_state_dict(state["per_batch"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (biases and norms excluded)."""
    return sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))

"""Explicit PyTorch training: device choice, one epoch, evaluation, fit.

Batches come from a batch source (``loaders``: preloaded on the device or
streamed from disk); the shuffling order comes from a CPU generator, so it is
the same on CPU and GPU and for both sources. Loss and accuracy are accumulated on the device and read back
once per epoch (no per-batch host sync).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.monitor import Monitor, NullMonitor
from foldwise.params import Params

DEVICE_ENV = "FOLDWISE_DEVICE"
EVAL_BATCH = 2048  # images per forward pass when no gradients are kept


def choose_device(value: str | None = None) -> torch.device:
    """Device from ``FOLDWISE_DEVICE`` (auto | cpu | cuda | cuda:N); auto prefers CUDA.

    An environment variable, not a param, so moving to another machine does
    not invalidate DVC's cache.
    """
    value = (value if value is not None else os.environ.get(DEVICE_ENV, "auto")).strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV}={value} but CUDA is not available; use auto or cpu")
        return torch.device(value)
    raise ValueError(f"{DEVICE_ENV}={value!r} is not valid; use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stats_tensors(stats: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's per-channel mean and std as 1 x C x 1 x 1 float32 tensors on ``device``."""
    mean = torch.tensor(stats["mean"], dtype=torch.float32).view(1, -1, 1, 1).to(device)
    std = torch.tensor(stats["std"], dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return mean, std


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 ``(x / 255 - mean) / std`` on the device of ``mean``."""
    if mean.shape[1] != images.shape[1]:
        raise ValueError(f"stats have {mean.shape[1]} channels, images have {images.shape[1]}")
    return ((images.to(mean.device).float() / 255.0 - mean) / std).contiguous()


def to_inputs(images: torch.Tensor, stats: dict[str, Any], device: torch.device) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 normalised with the train split's mean/std, on ``device``."""
    return normalise(images, *stats_tensors(stats, device))


def make_optimizer(model: nn.Module, p: Params) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW with ``lr`` and ``weight_decay``."""
    if p.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum,
                               nesterov=p.nesterov and p.momentum > 0, weight_decay=p.weight_decay)
    cls = torch.optim.Adam if p.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, p: Params, steps_per_epoch: int) -> tuple[Any, str]:
    """The LR schedule and when it steps: ``batch``, ``epoch``, ``valid_loss`` or ``never``."""
    total = p.epochs * steps_per_epoch
    if p.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p.lr, total_steps=total), "batch"
    if p.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "batch"
    if p.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.step_size, gamma=p.gamma), "epoch"
    if p.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=p.gamma, patience=p.plateau_patience), "valid_loss"
    return None, "never"


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (biases and norms excluded)."""
    return sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


class Preloaded:
    """A batch source: images already normalised in one tensor on the device, labels there too."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: np.ndarray) -> "Preloaded":
        index = torch.as_tensor(idx, device=self.x.device)
        return Preloaded(self.x[index], None if self.labels is None else self.labels[index])

    def batches(self, order: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, Any]]:
        for idx in order.to(self.x.device).split(size):
            yield self.x[idx], None if self.labels is None else self.labels[idx]


def as_batches(data: Any) -> Any:
    """A batch source: ``Preloaded``/``loaders.Streamed`` as they are; an (x, y) pair or x wrapped."""
    if isinstance(data, torch.Tensor):
        return Preloaded(data)
    if isinstance(data, tuple):
        return Preloaded(*data)
    return data


def train_one_epoch(model: nn.Module, data: Any, optimizer: torch.optim.Optimizer,
                    p: Params, generator: torch.Generator, scheduler: Any = None) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns mean cross-entropy and accuracy.

    ``data`` is a batch source (see ``as_batches``); the shuffling order is
    drawn here from a CPU generator, so every source and device sees the same
    batches. The reported loss is the data term only, so runs with and
    without L1 compare. A trailing batch of one image is dropped: BatchNorm
    cannot train on it.
    """
    model.train()
    data = as_batches(data)
    n = len(data)
    order = torch.randperm(n, generator=generator)
    if n > 1 and n % p.batch_size == 1:
        order = order[:-1]
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in data.batches(order, p.batch_size):
        logits = model(x)
        data_loss = F.cross_entropy(logits, y)
        loss = data_loss + p.l1 * l1_penalty(model) if p.l1 > 0 else data_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += data_loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def predict(model: nn.Module, data: Any) -> torch.Tensor:
    """Logits for every image of ``data`` (a batch source or a tensor), in eval mode, in large batches."""
    model.eval()
    data = as_batches(data)
    return torch.cat([model(x) for x, _ in data.batches(torch.arange(len(data)), EVAL_BATCH)])


def evaluate(model: nn.Module, data: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (a batch source or an (x, y) pair)."""
    data = as_batches(data)
    logits = predict(model, data)
    labels = data.labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


@dataclass
class FitResult:
    """Per-epoch history rows, and the weights of the epoch with the best valid accuracy."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0


def fit(model: nn.Module, train: Any, valid: Any, p: Params, seed: int, monitor: Monitor | None = None,
        tags: dict[str, Any] | None = None) -> FitResult:
    """Train for ``p.epochs``, validating after each; keep the best epoch's weights.

    ``tags`` (e.g. variant, fold) are copied into every history row so rows
    from many runs can share one table.
    """
    monitor = monitor or NullMonitor()
    tags = tags or {}
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, p)
    train, valid = as_batches(train), as_batches(valid)
    steps = max(1, -(-len(train) // p.batch_size))
    scheduler, when = make_scheduler(optimizer, p, steps)
    result = FitResult()
    best_acc = -1.0
    for epoch in range(1, p.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(
            model, train, optimizer, p, generator, scheduler if when == "batch" else None)
        valid_loss, valid_acc = evaluate(model, valid)
        if when == "epoch":
            scheduler.step()
        elif when == "valid_loss":
            scheduler.step(valid_loss)
        row = {**tags, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "valid_loss": valid_loss, "valid_acc": valid_acc, "lr": lr,
               "seconds": time.perf_counter() - started}
        result.history.append(row)
        if valid_acc > best_acc:
            best_acc = valid_acc
            result.best_epoch = epoch
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        monitor.on_epoch_end(row)
    return result

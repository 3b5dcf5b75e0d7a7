"""Explicit PyTorch training: device choice, one epoch, evaluation, fit.

Batches come from a batch source (``data.batches``: preloaded on the device or
streamed from disk); the shuffling order comes from a CPU generator, so it is
the same on CPU and GPU and for both sources. Loss and accuracy are accumulated on the device and read back
once per epoch (no per-batch host sync).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from foldwise.core.params import Params
from foldwise.data.batches import BatchSource
from foldwise.training.augment import Augmenter
from foldwise.training.callbacks import Monitor, NullMonitor
from foldwise.training.ddp import SINGLE, Group
from foldwise.training.optim import Schedule, l1_penalty, make_optimizer

DEVICE_ENV = "FOLDWISE_DEVICE"
AMP_ENV = "FOLDWISE_AMP"  # auto (bfloat16 autocast on CUDA) | off
# Images per forward pass when no gradients are kept. 10,000 LeNet images on 2 cores: 255 ms at
# 1,024, 390 ms at 2,048 (whose first activations, 51 MB, outgrow the CPU's cache); the MLP's time
# does not depend on it.
EVAL_BATCH = 1024
RANK_SEED_STEP = 1_000_003  # DDP: process r's dropout and augmentation seeds are seed + r x this (0: seed itself)


def choose_device(value: str | None = None) -> torch.device:
    """Device from ``FOLDWISE_DEVICE`` (auto | cpu | cuda | cuda:N); auto prefers CUDA.

    An environment variable, not a param, so moving to another machine does
    not invalidate DVC's cache.
    """
    value = (value if value is not None else os.environ.get(DEVICE_ENV, "auto")).strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # pragma: no mutate (CUDA only)
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV}={value} but CUDA is not available; use auto or cpu")
        return torch.device(value)  # pragma: no mutate (CUDA only)
    raise ValueError(f"{DEVICE_ENV}={value!r} is not valid; use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run.

    cuDNN is asked for deterministic kernels, so a GPU run repeats too (at
    some cost in speed).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def autocast_dtype(device: torch.device, precision: str = "fp32") -> torch.dtype | None:
    """The autocast dtype of training's forward passes; None = full float32.

    CUDA: bfloat16 on GPUs that support it (no loss scaling needed) unless ``FOLDWISE_AMP=off``: GPU
    runs do not repeat bit for bit anyway. CPU: the ``precision`` param, since it changes the results;
    it pays only on CPUs with AMX (``bf16_slow_reason``). Evaluation and predictions always run in float32.
    """
    if device.type == "cpu":
        return torch.bfloat16 if precision == "bf16" else None
    if device.type != "cuda" or os.environ.get(AMP_ENV, "auto").lower() in ("off", "0", "false"):  # pragma: no mutate
        return None  # pragma: no mutate (CUDA only)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None  # pragma: no mutate (CUDA only)


_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's own settings: the instructions it may use
_warned: set[str] = set()  # the warnings this process printed already


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags (Linux x86: /proc/cpuinfo's ``flags``); None where unknown."""
    try:
        with open("/proc/cpuinfo") as info:
            line = next((line for line in info if line.startswith("flags")), None)
    except OSError:  # pragma: no mutate (not Linux)
        return None  # pragma: no mutate (not Linux)
    return set(line.split(":", 1)[1].split()) if line else None


def bf16_slow_reason(device: torch.device, precision: str, flags: set[str] | None,
                     env: dict[str, str] | None = None) -> str | None:
    """Why bfloat16 training will be slower than float32 here, or None. It pays only on CPUs with
    AMX: with bfloat16 dot products alone, with AVX-512 alone and with AVX2 it trains slower than
    float32 (benchmarks/precision.md). ``flags``: ``cpu_flags()``; unknown flags (not Linux x86)
    give None, as does a CUDA device. ``env``: where oneDNN's instruction cap is read (the process's)."""
    if device.type != "cpu" or precision != "bf16" or flags is None:
        return None
    env = os.environ if env is None else env
    cap = next((f"{key}={env[key]}" for key in _ISA_CAPS if env.get(key)), "")
    if cap and "AMX" not in cap.upper() and not cap.upper().endswith("=ALL"):
        return f"{cap} keeps oneDNN from AMX"
    if "amx_bf16" not in flags:
        return "this CPU has no AMX (no amx_bf16 in /proc/cpuinfo)"
    return None


def warn_if_bf16_is_slow(device: torch.device, precision: str) -> None:
    """One stderr warning per process when ``precision: bf16`` will train slower than fp32 here: it
    still runs, since the results are what the params ask for, only slower."""
    reason = bf16_slow_reason(device, precision, cpu_flags())
    if reason is None or reason in _warned:
        return
    _warned.add(reason)
    print(f"warning: precision: bf16 trains slower than fp32 on this machine: {reason}. bfloat16 pays only on "
          "CPUs with AMX (benchmarks/precision.md); for speed here, run with -S precision=fp32", file=sys.stderr)


def _channels_last(model: nn.Module) -> bool:
    """NHWC layout for convolutional models: faster on CUDA tensor cores and with oneDNN on CPUs
    (LeNet epoch of 40,000 images on 2 cores: 3.0 s vs 3.5 s)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_training_layout(model: nn.Module) -> None:
    """Channels-last weights for convolutional models (see ``_channels_last``); others unchanged."""
    if _channels_last(model):
        model.to(memory_format=torch.channels_last)  # pragma: no mutate (layout: speed, not results)


def train_one_epoch(model: nn.Module, data: BatchSource, optimizer: torch.optim.Optimizer,
                    p: Params, generator: torch.Generator, schedule: Schedule | None = None,
                    augmenter: Augmenter | None = None,
                    on_step: Callable[[int, torch.Tensor, float], None] | None = None,
                    group: Group = SINGLE, epoch: int = 1,
                    average: AveragedModel | None = None) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns mean cross-entropy and accuracy.

    ``data`` is a batch source (``BatchSource``); the shuffling order is
    drawn here from a CPU generator, so every source and device sees the same
    batches. ``augmenter`` (training only) transforms each batch (``epoch``, from 1: for its
    alternating flips). The reported loss is the data term only, so runs with and without L1
    compare; with ``label_smoothing`` it is still the cross-entropy with the true class, which the
    smoothed loss trained on is a mix of, so runs with and without it compare too. ``average`` (the
    ``ema`` of the weights) is updated after every step. A trailing batch of one image is dropped:
    BatchNorm cannot train on it. ``on_step(batches_done, loss, lr)`` (a monitor) gets each batch's
    detached loss tensor, still on the device: reading it is the monitor's
    choice, so no batch waits for the device here. Under DDP (``group`` of N processes) each
    process trains its slice of every global batch, and the losses and accuracies are all of them.
    """
    model.train()
    n = len(data)
    order = torch.randperm(n, generator=generator)
    rest = n % p.batch_size
    if n > 1 and 0 < rest < 2 * group.world:  # each process's slice needs 2 images
        order = order[:-rest]
    sizes: int | list[int] = p.batch_size
    if group.world > 1:  # this process's contiguous slice of each global batch, and its share of the mean
        globals_ = order.split(p.batch_size)
        slices = [b.tensor_split(group.world)[group.rank] for b in globals_]
        weights = [len(s) * group.world / len(b) for s, b in zip(slices, globals_)]
        order, sizes = torch.cat(slices), [len(s) for s in slices]
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, p.precision)
    nhwc = _channels_last(model)
    data_loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    picks = order.split(sizes)  # each batch's images (positions in ``data``)
    for step, (x, y) in enumerate(data.batches(order, sizes), 1):
        if augmenter is not None:
            x = augmenter(x, picks[step - 1], epoch)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
            data_loss, objective = _losses(logits.float(), y, p.label_smoothing)
        # DDP averages gradients over processes: weighting each slice's mean by its share of the
        # global batch makes that the gradient of the global batch's mean
        share = objective * weights[step - 1] if group.world > 1 else objective
        loss = share + p.l1 * l1_penalty(model) if p.l1 > 0 else share
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model.module if group.world > 1 else model)
        if on_step is not None:
            on_step(step, data_loss.detach(), optimizer.param_groups[0]["lr"])
        if schedule is not None:
            schedule.after_batch()
        data_loss_sum += data_loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    if group.world > 1:
        loss_total, correct_total, seen_total = group.total(data_loss_sum, correct, seen)
        return loss_total / seen_total, correct_total / seen_total
    return data_loss_sum.item() / seen, correct.item() / seen


def _losses(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy with the true class (nats per image), and the loss to train on: the
    label-smoothed cross-entropy (1 - s) x that + s x the mean over classes of -log p, i.e. torch's
    ``cross_entropy(label_smoothing=s)``, from one log-softmax. With s = 0 both are torch's
    ``cross_entropy`` to the bit, its gradient too (x 1, and + -0 x the mean)."""
    log_p = F.log_softmax(logits, dim=1)
    true_class = F.nll_loss(log_p, y)
    return true_class, (1 - smoothing) * true_class - smoothing * log_p.mean()


@torch.inference_mode()
def predict(model: nn.Module, data: BatchSource) -> torch.Tensor:
    """Float32 logits for every image of ``data``, in stored order, in eval mode, in large batches."""
    model.eval()
    device = next(model.parameters()).device
    dtype = autocast_dtype(device)  # CPU: float32 whatever training used, as the exported model runs
    nhwc = _channels_last(model)
    out = []
    for x, _ in data.batches(None, EVAL_BATCH):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(model(x.contiguous(memory_format=torch.channels_last) if nhwc else x).float())
    return torch.cat(out)


@dataclass
class Evaluation:
    """A model on a labelled set: mean cross-entropy, accuracy, and per image its logits and predicted
    class (tensors on the model's device)."""

    loss: float
    accuracy: float
    logits: torch.Tensor
    predicted: torch.Tensor

    @property
    def confidence(self) -> torch.Tensor:
        """Per image, the predicted class's softmax probability: computed when asked for (the test set),
        not for every epoch's validation."""
        return F.softmax(self.logits, dim=1).gather(1, self.predicted[:, None])[:, 0]


def evaluate(model: nn.Module, data: BatchSource) -> Evaluation:
    """``model`` on ``data`` (labelled) in eval mode: the one evaluation path of
    validation in ``fit`` and of the test set."""
    logits = predict(model, data)
    labels = data.labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    predicted = logits.argmax(1)
    acc = (predicted == labels).float().mean().item()
    return Evaluation(loss, acc, logits, predicted)


@dataclass
class FitResult:
    """Per-epoch history rows and the weights ``fit`` kept.

    ``best_epoch``/``best_state``: the epoch with the lowest valid loss when
    early stopping (``patience`` > 0; the model ends with these weights),
    else the one with the highest valid accuracy (the model ends with the
    last epoch's weights). ``final`` is the history row of the weights the
    model ends with.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    best_value: float = math.nan
    bad_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False  # patience ran out before the last epoch
    restored_best: bool = False  # early stopping: the model ends with the best epoch's weights

    @property
    def final(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.restored_best else self.history[-1]

    def add_epoch(self, row: dict[str, Any], model: nn.Module, p: Params) -> None:
        """Record the history ``row`` of the epoch just validated: keep ``model``'s weights (a CPU copy)
        when it is the best so far, else count a bad epoch; early stopping (``patience`` > 0) judges the
        valid loss, a tie being no improvement, and running out on the last epoch is no early stop."""
        self.history.append(row)
        epoch, by_loss = row["epoch"], p.patience > 0
        value = row["valid_loss"] if by_loss else row["valid_acc"]
        if self.best_epoch == 0 or (value < self.best_value if by_loss else value > self.best_value):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
            self.stopped_early = by_loss and self.bad_epochs >= p.patience and epoch < p.epochs


def _rng_state(device: torch.device) -> dict[str, Any]:  # pragma: no mutate block (CUDA only: CPU state is tested)
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:  # pragma: no mutate block (as _rng_state)
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _step_hook(
    monitor: Monitor,
    tags: dict[str, Any],
    done: int,
    steps: int,
) -> Callable[[int, torch.Tensor, float], None] | None:
    """``train_one_epoch``'s per-batch callback for ``monitor``, its x axis in epochs; None when unwanted."""
    if monitor.wants_steps:
        return lambda step, loss, lr: monitor.on_step(tags, done + step / steps, loss, lr)
    return None


def _validate(core: nn.Module, valid: BatchSource, group: Group) -> tuple[float, float, torch.Tensor]:
    """Valid loss, accuracy and predicted classes of ``core`` (the weights, not their DDP wrapper);
    under DDP each process evaluates its share (``valid`` is then that share) and the sums are
    all-reduced, so every process gets the same."""
    if group.world == 1:
        checked = evaluate(core, valid)
        return checked.loss, checked.accuracy, checked.predicted
    group.share_buffers(core)
    checked = evaluate(core, valid)
    loss_sum, correct, seen = group.total(checked.loss * len(valid), checked.accuracy * len(valid), len(valid))
    predicted = torch.cat([part.to(checked.predicted.device) for part in group.gather(checked.predicted.cpu())])
    return loss_sum / seen, round(correct) / seen, predicted


def fit(model: nn.Module, train: BatchSource, valid: BatchSource, p: Params, seed: int, monitor: Monitor | None = None,
        tags: dict[str, Any] | None = None, resume: dict[str, Any] | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None, group: Group = SINGLE) -> FitResult:
    """Train for ``p.epochs`` (fewer when early stopping), validating after each epoch.

    ``tags`` (e.g. variant, fold) are copied into every history row so rows
    from many runs can share one table. After every epoch, ``checkpoint``
    receives everything needed to continue (weights, optimiser, schedule,
    every random generator, history); passing that as ``resume`` continues
    the run exactly where it stopped, giving the same result as an
    uninterrupted run. Under DDP, ``model`` is the ``DistributedDataParallel`` of ``group``'s
    processes: every process calls ``fit`` and ``checkpoint``, whose state holds every process's
    random generators (process 0 writes it).
    """
    monitor = monitor or NullMonitor()
    tags = tags or {}
    device = next(model.parameters()).device
    core = model.module if group.world > 1 else model  # the weights to keep, save and resume
    labels = valid.labels
    if group.world > 1:
        valid = valid.subset(group.shard(len(valid)))
    warn_if_bf16_is_slow(device, p.precision)
    to_training_layout(model)
    generator = torch.Generator().manual_seed(seed)
    augmenter = Augmenter(p, seed + RANK_SEED_STEP * group.rank, len(train), seed) if p.augment else None  # own
    # crops per process; alternating flips are the same per image in every process
    optimizer = make_optimizer(model, p)
    steps = max(1, -(-len(train) // p.batch_size))  # batches per epoch
    schedule = Schedule(optimizer, p, steps)
    average = moving_average(core, p.ema) if p.ema > 0 else None
    judged = core if average is None else average.module  # the weights validated, kept and saved
    result = FitResult()
    if resume is not None:
        mine = (lambda key: resume[key][group.rank]) if group.world > 1 else resume.__getitem__
        core.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        if average is not None:
            average.load_state_dict(resume["average"])
        generator.set_state(resume["generator"])
        if augmenter is not None:
            augmenter.load_state_dict(mine("augmenter"))
        _set_rng_state(mine("rng"), device)
        result = FitResult(**resume["result"])
        monitor.on_resume(result.history)
    while len(result.history) < p.epochs and not result.stopped_early:
        epoch = len(result.history) + 1
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(model, train, optimizer, p, generator, schedule, augmenter,
                                                _step_hook(monitor, tags, epoch - 1, steps), group, epoch,
                                                average)
        valid_loss, valid_acc, predicted = _validate(judged, valid, group)
        if monitor.wants_predictions:
            monitor.on_predictions({**tags, "epoch": epoch}, labels, predicted)
        schedule.after_epoch(valid_loss)
        row = {**tags, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "valid_loss": valid_loss, "valid_acc": valid_acc, "lr": lr,
               "seconds": time.perf_counter() - started}
        result.add_epoch(row, judged, p)
        monitor.on_epoch_end(row)
        if checkpoint is not None:
            own = {"augmenter": None if augmenter is None else augmenter.state_dict(), "rng": _rng_state(device)}
            if group.world > 1:  # each process's own streams, in rank order
                own = {key: [state[key] for state in group.gather(own)] for key in own}
            checkpoint({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "generator": generator.get_state(),
                        "average": None if average is None else average.state_dict(),
                        **own, "result": dataclasses.asdict(result)})
    if p.patience > 0:  # early stopping restores the best weights, whether or not it stopped
        core.load_state_dict(result.best_state)
        result.restored_best = True
    elif average is not None:
        core.load_state_dict(average.module.state_dict())
    return result


def moving_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers (BatchNorm's statistics):
    after each step, average = decay x average + (1 - decay) x weights; the first step copies them.
    torch's ``AveragedModel``: its copy of the model is what ``fit`` validates and keeps."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

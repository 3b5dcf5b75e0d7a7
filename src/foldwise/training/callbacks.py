"""Training callbacks. A monitor can never break training: every hook swallows its own errors.

``ConsoleMonitor`` prints one line per epoch so ``dvc repro`` shows
progress; ``live.visdom_monitor.VisdomMonitor`` draws the live view;
``live.dvclive_monitor.DvcLiveMonitor`` writes dvclive's files for DVC's tools. Hooks receive plain
values (and, per step, a detached loss tensor); they must return at once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

HOOKS = ("start", "on_step", "on_epoch_end", "on_resume", "on_predictions", "on_fold_end", "on_test", "close")


def _guarded(hook: Callable[..., None]) -> Callable[..., None]:
    """``hook`` that prints one warning per monitor instead of raising."""
    @functools.wraps(hook)
    def call(self: Monitor, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
            if not self._warned:
                self._warned = True
                print(f"warning: monitor {type(self).__name__}.{hook.__name__} failed ({exc}); "
                      "training continues", file=sys.stderr)
    return call


class Monitor:
    """Hooks called by ``fit``, crossval and the stages; subclasses override the ones they use.

    Every hook a subclass defines is guarded when the class is created (``__init_subclass__``), so an
    error in it prints one warning and training goes on. ``wants_steps``: call ``on_step`` after every
    batch (costs a Python call per batch, so only monitors that draw per-step curves ask for it).
    ``wants_predictions``: call ``on_predictions`` with the validation predictions after every epoch.
    """

    wants_steps = False
    wants_predictions = False
    _warned = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HOOKS:
            if name in cls.__dict__:
                setattr(cls, name, _guarded(cls.__dict__[name]))

    def start(self, info: dict[str, Any]) -> None:
        """Once per stage: ``stage``, ``params`` (dict), ``device``, ``classes``, ``total_epochs``."""

    def on_step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        """After each batch: ``epoch`` counts from 0 in fractions of an epoch; ``loss`` stays on the device."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """The newest history row (tags, epoch, train/valid loss and accuracy, lr, seconds)."""

    def on_resume(self, rows: list[dict[str, Any]]) -> None:
        """History rows finished before an interruption, in order, when a run resumes from its checkpoint."""

    def on_predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        """Validation labels and predicted classes after an epoch (``tags`` include it), when ``wants_predictions``."""

    def on_fold_end(self, row: dict[str, Any]) -> None:
        """Crossval: one finished (variant, fold) row of folds.csv."""

    def on_test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
                actual: np.ndarray, predicted: np.ndarray) -> None:
        """Evaluate: the test confusion matrix (rows = actual) and sample uint8 N x C x H x W images."""

    def close(self) -> None:
        """End of the stage: deliver what is pending (bounded in time)."""


class NullMonitor(Monitor):
    """Does nothing."""


class ConsoleMonitor(Monitor):
    """One short line per epoch on stderr."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        tags = " ".join(f"{k}={row[k]}" for k in ("variant", "fold") if k in row)
        print(
            f"{tags} epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f} | {row['seconds']:.1f} s",
            file=sys.stderr, flush=True,
        )


class Monitors(Monitor):
    """Several monitors as one; each stays guarded on its own, and gets steps or predictions only if it wants them."""

    def __init__(self, *monitors: Monitor) -> None:
        self.monitors = monitors
        self.wants_steps = any(m.wants_steps for m in monitors)
        self.wants_predictions = any(m.wants_predictions for m in monitors)

    def _each(self, hook: str, *args: Any, wanted: str | None = None) -> None:
        for m in self.monitors:
            if wanted is None or getattr(m, wanted):
                getattr(m, hook)(*args)

    def start(self, info: dict[str, Any]) -> None:
        self._each("start", info)

    def on_step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        self._each("on_step", tags, epoch, loss, lr, wanted="wants_steps")

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self._each("on_epoch_end", row)

    def on_resume(self, rows: list[dict[str, Any]]) -> None:
        self._each("on_resume", rows)

    def on_predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        self._each("on_predictions", tags, labels, predicted, wanted="wants_predictions")

    def on_fold_end(self, row: dict[str, Any]) -> None:
        self._each("on_fold_end", row)

    def on_test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
                actual: np.ndarray, predicted: np.ndarray) -> None:
        self._each("on_test", confusion, classes, images, actual, predicted)

    def close(self) -> None:
        self._each("close")

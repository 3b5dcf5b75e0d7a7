"""Training callbacks. A monitor can never break training: every hook swallows its own errors.

``ConsoleMonitor`` prints one line per epoch so ``dvc repro`` shows
progress; ``visdom_monitor.VisdomMonitor`` draws the live view;
``dvclive_monitor.DvcLiveMonitor`` writes dvclive's files for DVC's tools. Hooks receive plain
values (and, per step, a detached loss tensor); they must return at once.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import numpy as np
import torch


def _guarded(hook: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(hook)
    def call(self: "Monitor", *args: Any, **kwargs: Any) -> None:
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

    ``wants_steps``: call ``on_step`` after every batch (costs a Python call
    per batch, so only monitors that draw per-step curves ask for it).
    ``wants_predictions``: call ``on_predictions`` with the validation
    predictions after every epoch.
    """

    wants_steps = False
    wants_predictions = False
    _warned = False

    @_guarded
    def start(self, info: dict[str, Any]) -> None:
        """Once per stage: ``stage``, ``params`` (dict), ``device``, ``classes``, ``total_epochs``."""
        self._start(info)

    @_guarded
    def on_step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        """After each batch: ``epoch`` counts from 0 in fractions of an epoch; ``loss`` stays on the device."""
        self._step(tags, epoch, loss, lr)

    @_guarded
    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """The newest history row (tags, epoch, train/valid loss and accuracy, lr, seconds)."""
        self._epoch_end(row)

    @_guarded
    def on_resume(self, rows: list[dict[str, Any]]) -> None:
        """History rows finished before an interruption, in order, when a run resumes from its checkpoint."""
        self._resume(rows)

    @_guarded
    def on_predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        """Validation labels and predicted classes after an epoch (``tags`` include it), when ``wants_predictions``."""
        self._predictions(tags, labels, predicted)

    @_guarded
    def on_fold_end(self, row: dict[str, Any]) -> None:
        """Crossval: one finished (variant, fold) row of folds.csv."""
        self._fold_end(row)

    @_guarded
    def on_test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
                actual: np.ndarray, predicted: np.ndarray) -> None:
        """Evaluate: the test confusion matrix (rows = actual) and sample uint8 N x C x H x W images."""
        self._test(confusion, classes, images, actual, predicted)

    @_guarded
    def close(self) -> None:
        """End of the stage: deliver what is pending (bounded in time)."""
        self._close()

    def _start(self, info: dict[str, Any]) -> None: ...
    def _step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None: ...
    def _epoch_end(self, row: dict[str, Any]) -> None: ...
    def _resume(self, rows: list[dict[str, Any]]) -> None: ...
    def _predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None: ...
    def _fold_end(self, row: dict[str, Any]) -> None: ...
    def _test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
              actual: np.ndarray, predicted: np.ndarray) -> None: ...
    def _close(self) -> None: ...


class NullMonitor(Monitor):
    """Does nothing."""


class ConsoleMonitor(Monitor):
    """One short line per epoch on stderr."""

    def _epoch_end(self, row: dict[str, Any]) -> None:
        tags = " ".join(f"{k}={row[k]}" for k in ("variant", "fold") if k in row)
        print(
            f"{tags} epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.4f} | {row['seconds']:.1f} s",
            file=sys.stderr, flush=True,
        )


class Monitors(Monitor):
    """Several monitors as one; each stays guarded on its own."""

    def __init__(self, *monitors: Monitor) -> None:
        self.monitors = monitors
        self.wants_steps = any(m.wants_steps for m in monitors)
        self.wants_predictions = any(m.wants_predictions for m in monitors)

    def _start(self, info: dict[str, Any]) -> None:
        for m in self.monitors:
            m.start(info)

    def _step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        for m in self.monitors:
            if m.wants_steps:
                m.on_step(tags, epoch, loss, lr)

    def _epoch_end(self, row: dict[str, Any]) -> None:
        for m in self.monitors:
            m.on_epoch_end(row)

    def _resume(self, rows: list[dict[str, Any]]) -> None:
        for m in self.monitors:
            m.on_resume(rows)

    def _predictions(self, tags: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor) -> None:
        for m in self.monitors:
            if m.wants_predictions:
                m.on_predictions(tags, labels, predicted)

    def _fold_end(self, row: dict[str, Any]) -> None:
        for m in self.monitors:
            m.on_fold_end(row)

    def _test(self, confusion: np.ndarray, classes: list[str], images: np.ndarray,
              actual: np.ndarray, predicted: np.ndarray) -> None:
        for m in self.monitors:
            m.on_test(confusion, classes, images, actual, predicted)

    def _close(self) -> None:
        for m in self.monitors:
            m.close()

"""Training callbacks. A monitor can never break training: errors are swallowed.

The Visdom live view plugs in here; ``ConsoleMonitor`` prints one line per
epoch so ``dvc repro`` shows progress.
"""

from __future__ import annotations

import sys
from typing import Any


class Monitor:
    """Receives each new history row; subclasses override ``_epoch_end``."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        try:
            self._epoch_end(row)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
            print(f"warning: monitor {type(self).__name__} failed: {exc}", file=sys.stderr)

    def _epoch_end(self, row: dict[str, Any]) -> None:
        pass


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

"""Per-epoch metrics in dvclive's files, so DVC's own tools show running and queued experiments live.

dvclive writes ``<dir>/plots/metrics/<name>.tsv`` (one ``step, value`` row
per epoch), ``<dir>/metrics.json`` (the latest values and the step) and,
for the VS Code extension, the step-completed signal of a queued run. The
stage declares ``<dir>`` as its outputs, so `dvc plots show` draws the
curves while the stage runs and DVC caches them when it ends.

One ``Live`` per stage. Crossval's names are ``<variant>/<metric>`` and
its step counts the variant's epochs across its folds (fold 2 of a
5-epoch run starts at step 6), so each variant is one curve per metric;
train's step is its epoch. No timestamps and no seconds: the files must be
a pure function of data, params and code, since dvc.lock records their
hash. Like every monitor it can never break training (``Monitor``'s hooks
swallow errors), and it only appends a few short lines per epoch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from foldwise.training.callbacks import Monitor

METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")  # history columns logged per epoch


class DvcLiveMonitor(Monitor):
    """Logs every history row to dvclive, grouped by the ``group_by`` tags (crossval: the variant)."""

    def __init__(self, directory: str | Path, group_by: tuple[str, ...] = ()) -> None:
        from dvclive import Live

        # dvclive's INFO lines ("Logging to experiment ...") would interleave with the epoch lines
        logging.getLogger("dvclive").setLevel(logging.WARNING)
        # Hand-written dvc.yaml: dvclive must neither write one nor save an experiment of its own.
        self.live = Live(dir=os.fspath(directory), save_dvc_exp=False, dvcyaml=False, report=None)
        self.group_by = group_by
        self.steps: dict[str, int] = {}

    def _log(self, row: dict[str, Any]) -> None:
        group = "/".join(str(row[key]) for key in self.group_by)
        step = self.steps.get(group, 0) + 1
        self.steps[group] = step
        self.live.step = step
        for name in METRICS:
            if name in row:
                self.live.log_metric(f"{group}/{name}" if group else name, float(row[name]))
        self.live.next_step()  # writes metrics.json and the step signal

    def on_resume(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:  # DVC removed the stage's outputs before this run: log again what was done
            self._log(row)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self._log(row)

    def close(self) -> None:
        self.live.make_summary()

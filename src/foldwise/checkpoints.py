"""Resumable training state, kept outside every DVC output.

A killed crossval or train stage continues where it stopped: after every
epoch the state of the running fit (and the result of every finished one) is
saved under ``.foldwise/checkpoints/<stage>/<key>/``. The key is a hash of
everything that determines the results (params, input files, the package's
code, the device type), so a checkpoint is only ever resumed by a run that
would have produced exactly the same thing. A finished stage deletes its
checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

from foldwise.outputs import atomic_file

CHECKPOINT_ENV = "FOLDWISE_CHECKPOINTS"  # where checkpoints go; default .foldwise/checkpoints
DEFAULT_DIR = Path(".foldwise") / "checkpoints"
PACKAGE = Path(__file__).resolve().parent


def fingerprint(config: Any, files: Iterable[str | Path] = ()) -> str:
    """A short hash of ``config`` (JSON-able), the bytes of ``files`` and the package's code."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in [*map(Path, files), *sorted(PACKAGE.glob("*.py"))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def for_stage(stage: str, params: dict[str, Any], device: str, inputs: Iterable[str | Path]) -> "Checkpoints":
    """The checkpoints of ``stage`` for these params (minus the untracked ones), device and input files."""
    from foldwise.params import UNTRACKED

    config = {k: v for k, v in params.items() if k not in UNTRACKED} | {"device": device}
    return Checkpoints(stage, fingerprint(config, inputs))


class Checkpoints:
    """Named checkpoints of one stage, valid only for one ``key`` (see ``fingerprint``)."""

    def __init__(self, stage: str, key: str, root: str | Path | None = None) -> None:
        self.root = Path(root or os.environ.get(CHECKPOINT_ENV) or DEFAULT_DIR)
        self.stage_dir = self.root / stage
        self.dir = self.stage_dir / key
        if self.stage_dir.is_dir():  # checkpoints of other params or code can never be resumed
            for stale in self.stage_dir.iterdir():
                if stale != self.dir:
                    shutil.rmtree(stale, ignore_errors=True)

    def load(self, name: str) -> dict[str, Any] | None:
        """The state saved as ``name``, or None when there is none (or it cannot be read)."""
        path = self.dir / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint only costs a re-run
            print(f"warning: ignoring unreadable checkpoint {path}: {exc}", file=sys.stderr)
            return None

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Replace checkpoint ``name`` atomically: a kill mid-write leaves the previous one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.dir / f"{name}.pt") as tmp:
            torch.save(state, tmp)

    def clear(self) -> None:
        """Delete this stage's checkpoints (the stage finished), and the default folders once empty."""
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        if self.root == DEFAULT_DIR:
            for folder in (self.root, self.root.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break

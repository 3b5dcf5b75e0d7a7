"""Resumable training state, kept outside every DVC output.

A killed crossval or train stage continues where it stopped: after every
epoch the state of the running fit (and the result of every finished one) is
saved under ``.foldwise/checkpoints/<stage>/<key>/``. The key is a hash of
everything that determines the results (params, input files, the package's
code, the device type), so a checkpoint is only ever resumed by a run that
would have produced exactly the same thing, and runs of different
experiments (queued side by side) never share or touch each other's keys. A
finished run deletes its own key only.

The folder sits in the DVC project the run belongs to: ``$DVC_ROOT``, which
DVC sets for every stage and points at the parent repository in queued
experiments (which run in temporary copies), so a killed queued experiment
resumes when it is queued again. Keys nobody has written to for
``STALE_DAYS`` (runs killed and never repeated) are pruned.

``FOLDWISE_CHECKPOINTS`` may name any folder, one that holds the user's own
``train/`` or ``crossval/`` included: every folder foldwise creates there gets
a ``MARKER`` file, and only marked folders are ever deleted (pruned, cleared,
or removed once empty). Under the default root, all of ``.foldwise/`` is ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from foldwise.core.errors import UserError
from foldwise.core.outputs import atomic_file

CHECKPOINT_ENV = "FOLDWISE_CHECKPOINTS"  # where checkpoints go; default $DVC_ROOT/.foldwise/checkpoints
DEFAULT_DIR = Path(".foldwise") / "checkpoints"
PACKAGE = Path(__file__).resolve().parents[1]  # foldwise/: all of its code is in the key
STALE_DAYS = 7.0  # a key untouched this long belongs to a run that was killed and never repeated
MARKER = ".foldwise-checkpoints"  # in every folder foldwise created under a checkpoint root


def default_root(environ: dict[str, str] | None = None) -> Path:
    """``$FOLDWISE_CHECKPOINTS``, else ``.foldwise/checkpoints`` in the DVC project (``$DVC_ROOT``, else cwd)."""
    environ = os.environ if environ is None else environ
    if environ.get(CHECKPOINT_ENV):
        return Path(environ[CHECKPOINT_ENV])
    return Path(environ.get("DVC_ROOT") or ".") / DEFAULT_DIR


def fingerprint(config: Any, files: Iterable[str | Path] = ()) -> str:
    """A short hash of ``config`` (JSON-able), the bytes of ``files`` and the package's code."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    code = [(path.relative_to(PACKAGE).as_posix(), path) for path in sorted(PACKAGE.rglob("*.py"))]
    for name, path in [*((Path(f).name, Path(f)) for f in files), *code]:
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def for_stage(stage: str, params: dict[str, Any], device: str, inputs: Iterable[str | Path]) -> Checkpoints:
    """The checkpoints of ``stage`` for these params (minus the untracked ones), device and input files."""
    from foldwise.core.params import UNTRACKED

    config = {k: v for k, v in params.items() if k not in UNTRACKED} | {"device": device}
    return Checkpoints(stage, fingerprint(config, inputs))


class Checkpoints:
    """Named checkpoints of one stage, valid only for one ``key`` (see ``fingerprint``)."""

    def __init__(self, stage: str, key: str, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_root()
        self._own_root = not root and not os.environ.get(CHECKPOINT_ENV)  # ours to remove once empty
        self.stage_dir = self.root / stage
        self.dir = self.stage_dir / key
        self._prune()

    def _ours(self, folder: Path) -> bool:
        """Whether foldwise created ``folder`` (everything under the default root is ours)."""
        return self._own_root or (folder / MARKER).is_file()

    def _prune(self) -> None:
        """Delete other keys untouched for STALE_DAYS; a running experiment's key is written every epoch."""
        if not self.stage_dir.is_dir():  # a key is pruned only if marked, even in a user's folder
            return
        cutoff = time.time() - STALE_DAYS * 86400
        for other in self.stage_dir.iterdir():
            try:
                if not other.is_dir() or not self._ours(other):
                    continue
                written = [f.stat().st_mtime for f in other.iterdir() if f.name != MARKER]
                newest = max([other.stat().st_mtime, *written])
            except OSError:
                continue  # being deleted by its own run
            if other != self.dir and newest < cutoff:
                shutil.rmtree(other, ignore_errors=True)

    def _make(self, folder: Path) -> None:
        """Create ``folder`` with the marker; one that exists already is used as it is, also when another
        run (a queued experiment beside this one) creates it between the check and the ``mkdir``."""
        if folder.is_dir():
            return
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            return
        (folder / MARKER).write_text("made by foldwise: deleted once its run finishes\n")

    def load(self, name: str) -> dict[str, Any] | None:
        """The state saved as ``name``, or None when there is none (or it cannot be read)."""
        path = self.dir / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True,
                              map_location="cpu")  # pragma: no mutate (only a CUDA-saved checkpoint tells: GPU)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint only costs a re-run
            print(f"warning: ignoring unreadable checkpoint {path}: {exc}", file=sys.stderr)
            return None

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Replace checkpoint ``name`` atomically: a kill mid-write leaves the previous one."""
        self._make(self.stage_dir)
        self._make(self.dir)
        if not self._ours(self.dir):
            raise UserError(f"{self.dir} exists and foldwise did not create it; point {CHECKPOINT_ENV} "
                            f"at another folder (an empty one, or one foldwise wrote to)")
        with atomic_file(self.dir / f"{name}.pt") as tmp:
            torch.save(state, tmp)

    def clear(self) -> None:
        """Delete this run's checkpoints (it finished), then the folders above it that foldwise
        made, once empty. Other keys (experiments running beside this one) are left alone."""
        if self.dir.is_dir() and self._ours(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        folders = [self.stage_dir, *((self.root, self.root.parent) if self._own_root else ())]
        for folder in folders:
            if not folder.is_dir() or not self._ours(folder):
                break
            if {p.name for p in folder.iterdir()} <= {MARKER}:
                (folder / MARKER).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                break

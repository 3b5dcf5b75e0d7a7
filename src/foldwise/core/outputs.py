"""Write stage outputs atomically.

A stage that fails must leave nothing that a later run could mistake for a
good output, so everything is written to a temporary sibling first
(``.<name>.tmp-<random>``) and moved into place only when complete (a rename
on the same filesystem). A stage killed outright (SIGKILL, power loss) cannot
clean up, so each stage calls ``remove_leftovers`` on its outputs when it
starts; meanwhile git ignores the names (``.gitignore``).

Outputs get the modes a plain ``open`` would give (0644 files, 0755 folders
under the usual umask 022), not ``tempfile``'s private 0600/0700, so the
group of a shared project can read them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # write_csv only calls the frame's method: stages that write no CSV need not import pandas
    import pandas as pd

TMP_MARK = ".tmp-"  # temporary siblings are named .<output name>.tmp-<random>


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public(path: Path, is_dir: bool) -> None:
    """Give a ``tempfile`` file (0600) or folder (0700) the mode ``open``/``mkdir`` would."""
    path.chmod((0o777 if is_dir else 0o666) & ~_umask())


def remove_leftovers(*paths: str | Path) -> list[Path]:
    """Delete what a killed run of this stage left next to its outputs; return what was deleted.

    Called when a stage starts: DVC's lock keeps two runs out of one
    workspace, so no temporary of a running writer can be hit.
    """
    removed = []
    for path in map(Path, paths):
        if path.parent.is_dir():
            for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}*")):
                _remove(leftover)
                removed.append(leftover)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    _public(tmp, is_dir=True)
    try:
        yield tmp
        _remove(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    _public(tmp, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON with a trailing newline."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Atomically write a DataFrame as CSV without its index."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)

"""DVC's experiment queue as this machine sees it: the worker processes `dvc queue start` runs."""

from __future__ import annotations

import os
from pathlib import Path


def queue_workers(repo: str | Path) -> list[int]:
    """The process ids of DVC's queue workers (``dvc exp queue-worker``) started in ``repo``; none where
    there is no ``/proc`` to read (Linux only). Polling ``dvc queue status`` instead costs 2-4 s of a
    core per call, which the workers it waits for need."""
    repo = Path(repo).resolve()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"queue-worker" in (proc / "cmdline").read_bytes() and Path(os.readlink(proc / "cwd")) == repo:
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(found)

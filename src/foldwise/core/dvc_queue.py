"""DVC's experiment queue as this machine sees it: the worker processes `dvc queue start` runs, and
how many experiments they are running now (each stage's share of the CPU)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _cmdline(pid: int) -> bytes:
    return (PROC / str(pid) / "cmdline").read_bytes()


def _parent(pid: int) -> int:
    """The parent's pid (``/proc/<pid>/stat``'s fourth field; the name before it may hold spaces)."""
    stat = (PROC / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cwd(pid: int) -> Path:
    return Path(os.readlink(PROC / str(pid) / "cwd"))


def queue_workers(repo: str | Path) -> list[int]:
    """The process ids of DVC's queue workers (``dvc exp queue-worker``) started in ``repo``; none where
    there is no ``/proc`` to read (Linux only). Polling ``dvc queue status`` instead costs 2-4 s of a
    core per call, which the workers it waits for need."""
    repo = Path(repo).resolve()
    found = []
    for proc in PROC.glob("[0-9]*"):
        try:
            if b"queue-worker" in _cmdline(int(proc.name)) and _cwd(int(proc.name)) == repo:
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(found)


def running_experiments(pid: int | None = None) -> int:
    """How many queued experiments DVC's workers are running now in the repo whose queue ran process
    ``pid`` (default: this one); 0 when it is not in a queued experiment (``dvc repro``, ``dvc exp run``
    without ``--queue``, or no ``/proc``).

    A queue worker runs one experiment at a time, as a child ``dvc exp exec-run`` process whose
    descendants are the stages, so this counts the workers of the same repo that have such a child.
    Idle workers (``-j 4`` with 2 experiments left) are not counted.
    """
    try:
        pid = os.getpid() if pid is None else pid
        worker = None
        while pid > 1:
            if b"queue-worker" in _cmdline(pid):
                worker = pid
                break
            pid = _parent(pid)
        if worker is None:
            return 0
        workers = set(queue_workers(_cwd(worker)))
        busy = set()
        for proc in PROC.glob("[0-9]*"):
            try:
                if b"exec-run" in _cmdline(int(proc.name)) and _parent(int(proc.name)) in workers:
                    busy.add(_parent(int(proc.name)))
            except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
                continue
        return max(1, len(busy))  # this stage's own experiment, even if its exec-run is hidden from us
    except (OSError, ValueError, IndexError):
        return 0

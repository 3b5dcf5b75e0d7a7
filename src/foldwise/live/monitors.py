"""The live view's wiring: which monitors a stage gets, which environment, what the stages send.

Switched on by ``FOLDWISE_VISDOM`` (an environment variable, so turning it
on or off re-runs no DVC stage); the monitor itself is
``visdom_monitor.VisdomMonitor``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from foldwise.live.settings import ENABLE_ENV, ENV_NAME_ENV, EVERY_ENV, LOG_DIR, server_url
from foldwise.live.visdom_monitor import VisdomMonitor
from foldwise.reporting.plot_data import confusion, pick_examples
from foldwise.training.callbacks import ConsoleMonitor, Monitor, Monitors


def _proc_stat(pid: int) -> tuple[int, int]:
    """(parent pid, start time in clock ticks after boot) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def _is_dvc(pid: int) -> bool:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
    return any(Path(arg.decode(errors="replace")).name == "dvc" for arg in argv)


def run_started() -> float:
    """When the ``dvc`` command running this stage started (epoch seconds), so its stages share one environment.

    Found by walking up the parent processes to the nearest ``dvc`` (Linux
    /proc); without one (a stage run by hand, another OS): this process's start.
    """
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        pid = os.getpid()
        ticks = _proc_stat(pid)[1]
        for _ in range(8):
            parent = _proc_stat(pid)[0]
            if parent <= 1:
                break
            pid = parent
            if _is_dvc(pid):
                ticks = _proc_stat(pid)[1]
                break
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def env_name(environ: dict[str, str] | None = None) -> str:
    """One visdom environment per run: the DVC experiment's name, else the run's start time."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_NAME_ENV):
        return environ[ENV_NAME_ENV]
    if environ.get("DVC_EXP_NAME"):
        return f"foldwise_{environ['DVC_EXP_NAME']}"
    return "foldwise_" + time.strftime("%Y-%m-%d-%H%M%S", time.localtime(run_started()))


def parse_every(value: str | None) -> tuple[int | None, float | None]:
    """``FOLDWISE_VISDOM_EVERY`` -> (steps, seconds) between per-step points; exactly one is set."""
    value = (value or "1s").strip().lower()
    try:
        if value.endswith("s"):
            seconds = float(value[:-1])
            if seconds > 0:
                return None, seconds
        elif int(value) > 0:
            return int(value), None
    except ValueError:
        pass
    raise ValueError(f"{EVERY_ENV}={value!r} is not valid; use a number of steps (25) or seconds (1s), above 0")


def test_view(prepared_dir: str | Path, predictions: pd.DataFrame, classes: list[str],
              seed: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``Monitor.on_test``'s arguments from evaluate's predictions (class names per test image, in order)."""
    from foldwise.data.layout import images_at

    matrix = confusion(predictions["actual"], predictions["predicted"], classes)  # as plots draws it
    index = {name: i for i, name in enumerate(classes)}
    actual = predictions["actual"].map(index).to_numpy()
    predicted = predictions["predicted"].map(index).to_numpy()
    chosen = pick_examples(len(predictions), seed)
    images = images_at(prepared_dir, "test", chosen)
    return matrix, classes, images, actual[chosen], predicted[chosen]


def show_test(monitor: Monitor, prepared_dir: str | Path, predictions: pd.DataFrame, classes: list[str],
              seed: int) -> None:
    """Send the test confusion and example grid to a live monitor; never raises (reading images can fail)."""
    if not monitor.wants_predictions:
        return
    try:
        monitor.on_test(*test_view(prepared_dir, predictions, classes, seed))
    except Exception as exc:  # noqa: BLE001 - the metrics are written; the live view is optional
        print(f"warning: visdom: no test view ({type(exc).__name__}: {exc})", file=sys.stderr)


def _dvclive(directory: str | Path | None, group_by: tuple[str, ...]) -> list[Monitor]:
    """dvclive's monitor for ``directory`` (a stage output), or none: a failure only costs the live files."""
    if directory is None:
        return []
    from foldwise.live.dvclive_monitor import DvcLiveMonitor

    try:
        return [DvcLiveMonitor(directory, group_by)]
    except Exception as exc:  # noqa: BLE001 - monitoring must never be the reason a run fails
        print(f"warning: dvclive: no live metrics in {directory} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return []


def monitor_from_env(stage: str, predictions: bool = False, environ: dict[str, str] | None = None,
                     live_dir: str | Path | None = None, group_by: tuple[str, ...] = ()) -> Monitor:
    """The stage's monitors: console lines, dvclive's files in ``live_dir`` (grouped by the
    ``group_by`` tags), and the live view when ``FOLDWISE_VISDOM`` is on.

    A bad setting is reported once and the stage trains without that
    monitor: monitoring must never be the reason a run fails.
    """
    environ = os.environ if environ is None else environ
    monitors: list[Monitor] = [ConsoleMonitor(), *_dvclive(live_dir, group_by)]
    try:
        url = server_url(environ.get(ENABLE_ENV))
        if url is not None:
            env = env_name(environ)
            root = Path(environ.get("DVC_ROOT", "."))
            log = root / LOG_DIR / f"{env}.jsonl"
            every = parse_every(environ.get(EVERY_ENV))
            print(f"live view: {url}/env/{env} (log {log})", file=sys.stderr)
            monitors.append(VisdomMonitor(url, env, log, stage, every, predictions))
    except Exception as exc:  # noqa: BLE001
        print(f"warning: visdom: live view off ({exc})", file=sys.stderr)
    return monitors[0] if len(monitors) == 1 else Monitors(*monitors)

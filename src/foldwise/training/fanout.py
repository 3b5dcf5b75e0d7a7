"""Crossval's (variant, fold) runs side by side: in local processes, or as Ray tasks on this machine's
cores and GPUs or on a cluster.

**Local processes** (``LocalFanout``) are the default on a CPU: each run trains in one of
``FOLDWISE_PARALLEL_RUNS`` worker processes with ``threads`` (a param) torch threads, so where and
how many side by side changes no result. ``auto`` (default) = the CPUs this process may use divided
by ``threads`` and by the queued experiments DVC is running now in this repo (``dvc queue start -j
2``: each gets half), at most what fits ``memory_budget_mb`` (each process holds the train split)
and the runs to do; 1 = one after another in the stage's process. On a GPU, auto is 1.

**Ray** is switched on by ``FOLDWISE_RAY`` (an environment variable, like ``FOLDWISE_DEVICE``: where the runs
go changes no result, so it must not invalidate DVC's cache): ``off`` (default) trains the runs one
after another in the stage's process; ``local`` starts Ray on this machine for the stage; anything
else is the address of a running cluster (``auto``, ``10.0.0.5:6379``, ``ray://head:10001``), which
several stages (queued experiments) share, Ray giving each run its own CPUs and GPUs.

Each run is one task asking for ``FOLDWISE_RAY_CPUS`` CPUs (default 1; it trains with ``threads``) and
``FOLDWISE_RAY_GPUS`` GPUs (default 1 on a cluster with GPUs, else 0; 0.25 = four runs per GPU),
and Ray sets ``CUDA_VISIBLE_DEVICES`` for it. The split travels once, as uint8 arrays, through Ray's
object store; every task normalises it on its device with the arithmetic of the sequential path and
trains its run with ``crossval.train_run`` on ``threads`` torch threads, so the results are the
sequential ones, bit for bit. Ray is an optional extra (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldwise.core.dvc_queue import running_experiments
from foldwise.core.errors import UserError
from foldwise.core.params import Params
from foldwise.data.batches import SplitArrays, open_arrays
from foldwise.training.callbacks import Monitor
from foldwise.training.crossval import Finished, LiveHook, RunResult, RunSpec, train_run
from foldwise.training.engine import choose_device
from foldwise.training.resume import Checkpoints

RAY_ENV, CPUS_ENV, GPUS_ENV = "FOLDWISE_RAY", "FOLDWISE_RAY_CPUS", "FOLDWISE_RAY_GPUS"
PARALLEL_ENV = "FOLDWISE_PARALLEL_RUNS"
LIVE_POLL_SECONDS = 0.2  # how often the stage's process passes on what its workers' runs reported
OFF = ("", "off", "0", "false", "no")
CONNECT_SECONDS = 5.0  # how long a cluster's address may take to answer


@dataclass(frozen=True)
class RaySettings:
    """Where the runs go (``local`` or a cluster's address) and what each asks Ray for."""

    address: str
    cpus: float = 1.0  # per run (its torch threads are the param threads)
    gpus: float | None = None  # per run; None = 1 where the cluster has GPUs, else 0


def _number(environ: dict[str, str], name: str, default: str, valid: str) -> float:
    text = environ.get(name, "").strip() or default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or (value > 1 and value != int(value)):  # Ray: fractions only below 1
        raise UserError(f"{name}={text!r} is not valid; use {valid}")
    return value


def ray_from_env(environ: dict[str, str] | None = None) -> RaySettings | None:
    """``FOLDWISE_RAY`` and the per-run resources, or None when the runs stay in this process."""
    environ = dict(os.environ if environ is None else environ)
    address = environ.get(RAY_ENV, "").strip()
    if address.lower() in OFF:
        return None
    cpus = _number(environ, CPUS_ENV, "1", "a number of CPUs per run above 0: a fraction below 1, "
                                           "else a whole number (e.g. 1 or 2)")
    if cpus == 0:
        raise UserError(f"{CPUS_ENV}=0 is not valid; a run needs CPUs: use e.g. 1, 2 or 0.5")
    gpus = None
    if environ.get(GPUS_ENV, "").strip():
        gpus = _number(environ, GPUS_ENV, "", "0 (CPU runs), a fraction below 1 (0.25 = four runs "
                                              "per GPU) or a whole number of GPUs per run")
    return RaySettings("local" if address.lower() == "local" else address, cpus, gpus)


def _check_installed() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"{RAY_ENV} is set but Ray is not installed; install it with "
                        f"`pip install -e '.[ray]'` (in this project's .venv), or unset {RAY_ENV}") from None
    return ray


def _placement(gpus: float) -> dict[str, Any]:
    """Where this task runs: node, process, the CPUs Ray holds for it and the GPUs it gave it (for the
    console and tests)."""
    import ray

    context = ray.get_runtime_context()
    try:
        cpus = context.get_assigned_resources().get("CPU", 0.0)
    except AssertionError:  # called in the driver, not in a task (a test comparing with the sequential run)
        cpus = None
    return {"node": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid(), "cpus": cpus,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES") if gpus > 0 else None}


def train_task(split: SplitArrays, num_classes: int, p: Params, spec: RunSpec,
               fold: tuple[np.ndarray, np.ndarray], saved: dict[str, Any] | None, threads: int,
               gpus: float) -> tuple[RunResult, dict[str, Any]]:
    """One run in a Ray worker: its row, history and weights, and where it ran (with start and end times, s)."""
    started = time.time()
    torch.set_num_threads(threads)
    # no GPU asked for: the CPU, even on a GPU node (Ray leaves CUDA_VISIBLE_DEVICES alone then)
    device = choose_device() if gpus > 0 else torch.device("cpu")
    data = split.to_source(device)
    writable = (np.array(fold[0]), np.array(fold[1]))  # copies: Ray's arrays are read-only
    result = train_run(data, num_classes, p, spec, writable, saved=saved)
    return result, {**_placement(gpus), "device": str(device), "start": started, "end": time.time()}


def _check_reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that nothing answers at is one line within
    ``CONNECT_SECONDS``: Ray itself retries such an address for many minutes without a word."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto", a name without a port, a bad port: Ray's own checks
        return
    try:  # an IPv6 host comes in brackets: [::1]:6379
        socket.create_connection((host.removeprefix("[").removesuffix("]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise UserError(f"{RAY_ENV}={address}: cannot join that Ray cluster (nothing answers at {host}:{port}: "
                        f"{exc.strerror or exc}); start it with `ray start --head`, or use {RAY_ENV}=local") from None


class RayFanout:
    """A ``crossval.Fanout`` onto Ray; a context manager that connects and (for ``local``) stops Ray.

    ``placements`` collects, per finished run's name, where it ran.
    """

    def __init__(self, settings: RaySettings, **init_kwargs: Any) -> None:
        self.settings = settings
        self.init_kwargs = init_kwargs  # for ray.init: tests give num_cpus / num_gpus to a local one
        self.placements: dict[str, dict[str, Any]] = {}
        self.gpus = 0.0
        self._ray: Any = None
        self._started = False

    def __enter__(self) -> RayFanout:
        ray = self._ray = _check_installed()
        s = self.settings
        if not ray.is_initialized():
            if s.address == "local":
                ray.init(address="local", include_dashboard=False, **self.init_kwargs)
            else:
                _check_reachable(s.address)
                try:
                    ray.init(address=s.address, **self.init_kwargs)
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise UserError(f"{RAY_ENV}={s.address}: cannot join that Ray cluster ({exc}); start it "
                                    f"with `ray start --head`, or use {RAY_ENV}=local") from None
            self._started = True
        have = ray.cluster_resources()
        self.gpus = s.gpus if s.gpus is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
        for kind, need, name in (("CPU", s.cpus, CPUS_ENV), ("GPU", self.gpus, GPUS_ENV)):
            if need > have.get(kind, 0):
                self.__exit__(None, None, None)
                raise UserError(f"{name}={need:g}, but the Ray cluster has {have.get(kind, 0):g} {kind}s in all: "
                                f"no run could ever start; ask for at most that")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def open_train(self, prepared_dir: str | Path, stats: dict[str, Any], p: Params) -> SplitArrays:
        """The train split as the arrays every task gets (``open_train``)."""
        return open_train(prepared_dir, stats, p)

    def describe(self) -> str:
        have = self._ray.cluster_resources()
        return (f"ray ({len(self._ray.nodes())} nodes, {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs; "
                f"{self.settings.cpus:g} CPU and {self.gpus:g} GPU per run)")

    def run(self, data: SplitArrays, num_classes: int, p: Params, folds: list[tuple[np.ndarray, np.ndarray]],
            pending: list[RunSpec], resume: dict[int, dict[str, Any]], live: LiveHook | None = None,
            steps: bool = False, checkpoints: Checkpoints | None = None) -> Finished:
        """Submit every pending run at once; yield each as it finishes (its epochs come with it; nothing
        reaches ``live``, nor ``checkpoints``: a run is checkpointed as it returns). Runs still going when
        the caller stops (an error, Ctrl-C) are cancelled."""
        ray = self._ray
        if not pending:
            return
        split = ray.put(data)  # once: every task reads the same object
        task = ray.remote(train_task).options(num_cpus=self.settings.cpus, num_gpus=self.gpus, max_retries=0)
        futures = {task.remote(split, num_classes, p, spec, folds[spec.fold], resume.get(spec.index),
                               p.threads, self.gpus): spec for spec in pending}
        try:
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1)
                spec = futures.pop(ready[0])
                result, where = _get(ray, ready[0])
                self.placements[spec.name] = where
                gpu = f", CUDA_VISIBLE_DEVICES={where['cuda_visible_devices']}" if self.gpus > 0 else ""
                print(f"{spec.variant} fold {spec.fold}: ran on {where['host']} (node {where['node'][:8]}, "
                      f"pid {where['pid']}, {where['device']}{gpu})", file=sys.stderr)
                yield spec, *result
        finally:
            for future in futures:
                ray.cancel(future, force=True)


def _get(ray: Any, future: Any) -> Any:
    """The task's value; its exception re-raised as itself (Ray wraps it in a RayTaskError)."""
    try:
        return ray.get(future)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if cause is not None:
            raise cause from None
        raise



def open_train(prepared_dir: str | Path, stats: dict[str, Any], p: Params) -> SplitArrays:
    """The train split as the arrays every Ray run gets; refused when, preloaded, it exceeds
    ``memory_budget_mb`` (each run holds all of it on its device; nothing streams from the files,
    which a cluster's other machines do not have)."""
    split = open_arrays(prepared_dir, "train", stats)
    if split.float_mb > p.memory_budget_mb:
        raise UserError(f"{RAY_ENV}: each Ray run holds the train split preloaded ({split.float_mb:.0f} MB as "
                        f"float32), more than memory_budget_mb={p.memory_budget_mb}; raise memory_budget_mb if "
                        f"every worker has that much memory, or unset {RAY_ENV} to stream it in one process")
    return split


def parallel_runs(p: Params, device: torch.device, environ: dict[str, str] | None = None,
                  cpus: int | None = None, experiments: int | None = None) -> int:
    """How many runs train side by side: ``FOLDWISE_PARALLEL_RUNS``, or for ``auto`` the CPUs this process
    may use (``cpus``) over ``threads`` x the queued experiments running in this repo (``experiments``);
    1 on a GPU."""
    environ = dict(os.environ if environ is None else environ)
    text = environ.get(PARALLEL_ENV, "").strip().lower() or "auto"
    if text != "auto":
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"{PARALLEL_ENV}={text!r} is not valid; use auto (the CPUs over threads and over the "
                            f"queued experiments running) or a whole number of runs >= 1 (1 = one at a time)")
        return int(text)
    if device.type != "cpu":
        return 1
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    experiments = running_experiments() if experiments is None else experiments
    return max(1, cpus // (p.threads * max(1, experiments)))


_WORKER: dict[str, Any] = {}  # in a LocalFanout worker: the split, preloaded once, and the live view's queue


def _start_worker(split: SplitArrays, threads: int, live: Any) -> None:
    torch.set_num_threads(threads)
    _WORKER["data"], _WORKER["live"] = split.to_source(torch.device("cpu")), live


class _Live(Monitor):
    """Sends what the run reports as it trains (each epoch's row; each step's loss, when ``wants_steps``) to the
    stage's process, for its live view."""

    def __init__(self, index: int, steps: bool) -> None:
        self.index, self.wants_steps = index, steps

    def on_step(self, tags: dict[str, Any], epoch: float, loss: torch.Tensor, lr: float) -> None:
        _WORKER["live"].put((self.index, "step", (tags, epoch, loss.item(), lr)))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        _WORKER["live"].put((self.index, "epoch", row))


def _local_task(num_classes: int, p: Params, spec: RunSpec, fold: tuple[np.ndarray, np.ndarray],
                saved: dict[str, Any] | None, steps: bool, checkpoints: Checkpoints | None) -> tuple[RunResult, int]:
    """One run in a LocalFanout worker process, checkpointed after every epoch, and that process's id."""
    save = (lambda state: checkpoints.save(spec.name, state)) if checkpoints else None
    return train_run(_WORKER["data"], num_classes, p, spec, fold, _Live(spec.index, steps), saved, save), os.getpid()


class LocalFanout:
    """A ``crossval.Fanout`` onto ``processes`` worker processes of this machine, each training one run at
    a time with ``threads`` torch threads; a context manager that stops them.

    Workers fork from a server process that has imported torch once (``forkserver``), and each gets
    the split once. ``pids`` collects, per finished run's name, the process that trained it.
    """

    device_type = "cpu"

    def __init__(self, processes: int, threads: int) -> None:
        self.processes, self.threads = processes, threads
        self.pids: dict[str, int] = {}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalFanout:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            workers = list(getattr(self._pool, "_processes", {}).values())  # pragma: no mutate (clean-up only)
            self._pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:  # runs still training after an error or Ctrl-C stop now
                worker.kill()
                worker.join()
            self._pool = None

    def describe(self) -> str:
        return f"cpu, {self.processes} runs side by side in local processes, {self.threads} torch threads each"

    def open_train(self, prepared_dir: str | Path, stats: dict[str, Any], p: Params) -> SplitArrays:
        """The train split as the arrays each worker preloads; fewer workers where ``memory_budget_mb``
        holds fewer copies of it (at least one: the single-process path preloads it too, or streams)."""
        split = open_arrays(prepared_dir, "train", stats)
        fits = int(p.memory_budget_mb // max(split.float_mb, 1e-9))
        if fits < self.processes:
            print(f"{PARALLEL_ENV}: {self.processes} runs side by side would hold {self.processes} copies of the "
                  f"train split ({split.float_mb:.0f} MB each), more than memory_budget_mb={p.memory_budget_mb}; "
                  f"running {max(1, fits)}", file=sys.stderr)
            self.processes = max(1, fits)
        return split

    def run(self, data: SplitArrays, num_classes: int, p: Params, folds: list[tuple[np.ndarray, np.ndarray]],
            pending: list[RunSpec], resume: dict[int, dict[str, Any]], live: LiveHook | None = None,
            steps: bool = False, checkpoints: Checkpoints | None = None) -> Finished:
        """Start every pending run; pass what each reports as it trains to ``live`` (steps only if ``steps``),
        checkpoint each after every epoch (as the stage's process does) and yield each run as it finishes
        (an error in one stops them all)."""
        if not pending:
            return
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["foldwise.training.crossval"])
        reports = context.SimpleQueue()  # written straight to a pipe: a run's reports precede its result
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(self.processes, len(pending)), mp_context=context,
            initializer=_start_worker, initargs=(data, self.threads, reports))
        futures = {self._pool.submit(_local_task, num_classes, p, spec, folds[spec.fold],
                                     resume.get(spec.index), steps, checkpoints): spec for spec in pending}
        by_index = {spec.index: spec for spec in pending}
        going = set(futures)
        while going:
            done, going = concurrent.futures.wait(going, timeout=LIVE_POLL_SECONDS,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            while not reports.empty():
                index, kind, item = reports.get()
                if live is not None:
                    live(by_index[index], kind, item)
            for future in sorted(done, key=lambda f: futures[f].index):
                spec = futures[future]
                try:
                    result, pid = future.result()
                except BrokenProcessPool:
                    raise RuntimeError(f"{spec.variant} fold {spec.fold}: a worker process died (killed, or out of "
                                       f"memory?); set {PARALLEL_ENV}=1 to train the runs one at a time in the "
                                       f"stage's process") from None
                self.pids[spec.name] = pid
                yield spec, *result


@contextlib.contextmanager
def fanout_from_env(p: Params, device: torch.device) -> Iterator[RayFanout | LocalFanout | None]:
    """Where crossval's runs go: the connected ``RayFanout`` that ``FOLDWISE_RAY`` asks for, a
    ``LocalFanout`` when more than one run trains side by side here, or None (one at a time in this
    process)."""
    settings = ray_from_env()
    if settings is not None:
        with RayFanout(settings) as fanout:
            yield fanout
        return
    processes = parallel_runs(p, device)
    if processes == 1:
        yield None
        return
    with LocalFanout(processes, p.threads) as fanout:
        yield fanout

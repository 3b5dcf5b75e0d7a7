"""Crossval's runs side by side in local processes: the sequential tables bit for bit, and how many.

Real worker processes (forkserver) training on the conftest data; no Ray. Starting the workers takes
seconds, so those tests are marked slow.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal

import pytest
import torch

from foldwise.core.errors import UserError
from foldwise.training.crossval import run_crossval
from foldwise.training.fanout import LocalFanout, fanout_from_env, parallel_runs
from tests.training.test_fanout import Order, arrays, assert_same, sequential

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_auto_shares_the_cpus_out_by_threads_and_by_the_queued_experiments_running(tiny_params):
    p2 = dataclasses.replace(tiny_params, threads=2)
    assert parallel_runs(tiny_params, CPU, {}, cpus=2, experiments=0) == 2
    assert parallel_runs(tiny_params, CPU, {}, cpus=2, experiments=1) == 2
    assert parallel_runs(tiny_params, CPU, {}, cpus=2, experiments=2) == 1  # dvc queue start -j 2
    assert parallel_runs(tiny_params, CPU, {}, cpus=16, experiments=3) == 5
    assert parallel_runs(p2, CPU, {}, cpus=16, experiments=0) == 8
    assert parallel_runs(p2, CPU, {}, cpus=3, experiments=0) == 1
    assert parallel_runs(tiny_params, CPU, {}, cpus=1, experiments=4) == 1
    assert parallel_runs(tiny_params, GPU, {}, cpus=16, experiments=0) == 1  # one GPU: one run at a time
    assert parallel_runs(tiny_params, CPU, {"FOLDWISE_PARALLEL_RUNS": " Auto "}, cpus=4, experiments=0) == 4
    assert parallel_runs(tiny_params, GPU, {"FOLDWISE_PARALLEL_RUNS": "3"}, cpus=1, experiments=2) == 3
    assert parallel_runs(tiny_params, CPU) == len(os.sched_getaffinity(0))  # this test is no queued experiment


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_number_of_runs_names_the_variable_and_what_is_valid(tiny_params, value):
    with pytest.raises(UserError, match=rf"^FOLDWISE_PARALLEL_RUNS={value!r} is not valid; use auto .* or a "
                                        r"whole number of runs >= 1 \(1 = one at a time\)$"):
        parallel_runs(tiny_params, CPU, {"FOLDWISE_PARALLEL_RUNS": value})


def test_one_run_at_a_time_stays_in_the_stage_process(tiny_params, monkeypatch):
    monkeypatch.setenv("FOLDWISE_PARALLEL_RUNS", "1")
    with fanout_from_env(tiny_params, CPU) as fanout:
        assert fanout is None
    monkeypatch.setenv("FOLDWISE_PARALLEL_RUNS", "2")
    with fanout_from_env(dataclasses.replace(tiny_params, threads=3), CPU) as fanout:
        assert isinstance(fanout, LocalFanout) and (fanout.processes, fanout.threads) == (2, 3)
        assert fanout.describe() == "cpu, 2 runs side by side in local processes, 3 torch threads each"


@pytest.mark.slow
def test_runs_side_by_side_give_the_sequential_tables_bit_for_bit(tiny_set, tiny_stats, tiny_params):
    """2 worker processes x 1 thread vs one process at 1 thread; the monitor sees the sequential order."""
    p = dataclasses.replace(tiny_params, epochs=3)
    alone = sequential(tiny_set, tiny_stats, p)
    seen = Order()
    with LocalFanout(2, p.threads) as fanout:
        fanned = run_crossval(arrays(tiny_set, tiny_stats), 3, p, seen, fanout=fanout)
    assert_same(alone, fanned)
    assert alone.history.train_loss.nunique() == len(alone.history)  # no degenerate tables
    assert len(fanout.pids) == 6 and len(set(fanout.pids.values())) == 2  # two workers shared the six runs
    assert os.getpid() not in fanout.pids.values()
    runs = [(v, f) for v in p.compared for f in range(2)]
    assert [e[1:] for e in seen.events if e[0] == "fold"] == runs
    assert [e[1:3] for e in seen.events if e[0] == "epoch"] == [r for r in runs for _ in range(3)]


class Steps(Order):
    wants_steps = True

    def on_step(self, tags, epoch, loss, lr):
        self.events.append(("step", tags["variant"], tags["fold"], epoch, loss.item(), lr, id(tags)))


@pytest.mark.slow
def test_a_monitor_that_wants_steps_gets_every_step_of_every_run_in_order(tiny_set, tiny_stats, tiny_params):
    """The per-batch losses (as the live view's step curve draws them) of the sequential run, one tags dict
    per run (a new dict starts a new trace)."""
    p = dataclasses.replace(tiny_params, compare=("baseline", "l2"))
    here, there = Steps(), Steps()
    sequential(tiny_set, tiny_stats, p, monitor=here)
    with LocalFanout(2, p.threads) as fanout:
        run_crossval(arrays(tiny_set, tiny_stats), 3, p, there, fanout=fanout)
    steps = [e for e in there.events if e[0] == "step"]
    assert [e[:6] for e in steps] == [e[:6] for e in here.events if e[0] == "step"]
    assert len(steps) == 4 * 2 * 3  # 4 runs x 2 epochs x 3 batches of 16 from 45 training images
    assert len({e[6] for e in steps}) == 4
    assert [e[0] for e in there.events] == [e[0] for e in here.events]


@pytest.mark.slow
def test_the_workers_train_with_the_threads_param_whatever_the_stage_uses(tiny_set, tiny_stats, tiny_params):
    """3 threads in the workers is the sequential run at 3 threads, not at the caller's 1 or the default."""
    p = dataclasses.replace(tiny_params, threads=3, compare=("baseline",))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with LocalFanout(2, p.threads) as fanout:
            fanned = run_crossval(arrays(tiny_set, tiny_stats), 3, p, fanout=fanout)
    finally:
        torch.set_num_threads(before)
    assert_same(sequential(tiny_set, tiny_stats, p, threads=3), fanned)


class KillWorker(Order):
    """Kills every worker once the first run is reported, as the OOM killer would."""

    def __init__(self, fanout: LocalFanout):
        super().__init__()
        self.fanout = fanout

    def on_fold_end(self, row):
        super().on_fold_end(row)
        if sum(e[0] == "fold" for e in self.events) == 1:
            for pid in set(self.fanout.pids.values()):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_that_dies_fails_crossval_with_a_way_out(tiny_set, tiny_stats, tiny_params):
    p = dataclasses.replace(tiny_params, epochs=30)
    with LocalFanout(2, 1) as fanout, pytest.raises(
            RuntimeError, match=r"fold \d: a worker process died \(killed, or out of memory\?\); set "
                                r"FOLDWISE_PARALLEL_RUNS=1 to train the runs one at a time in the stage's process"):
        run_crossval(arrays(tiny_set, tiny_stats), 3, p, KillWorker(fanout), fanout=fanout)
    assert fanout._pool is None  # stopped: no worker left behind


def test_fewer_runs_side_by_side_where_the_memory_budget_holds_fewer_copies(tmp_path, tiny_params, capsys):
    """128 images of 1 x 64 x 64 are exactly 2 MiB as float32: a budget of 4 holds two copies, 3 one."""
    from foldwise.data.prepare import prepare
    from tests.conftest import CLASSES, make_images

    prepare({"train": make_images(158, size=64), "test": make_images(30, size=64, seed=1)}, tuple(CLASSES),
            tmp_path, 30, 0, seed=0)
    stats = {"mean": [0.3], "std": [0.3]}
    fanout = LocalFanout(2, 1)
    assert fanout.open_train(tmp_path, stats, dataclasses.replace(tiny_params, memory_budget_mb=4)).float_mb == 2.0
    assert fanout.processes == 2 and capsys.readouterr().err == ""
    fanout.open_train(tmp_path, stats, dataclasses.replace(tiny_params, memory_budget_mb=3))
    assert fanout.processes == 1
    assert capsys.readouterr().err == (
        "FOLDWISE_PARALLEL_RUNS: 2 runs side by side would hold 2 copies of the train split (2 MB each), more "
        "than memory_budget_mb=3; running 1\n")


class StopAtEpoch(Order):
    """Stops crossval (as Ctrl-C would) when the first run's ``epoch`` reaches the stage's process."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, row):
        super().on_epoch_end(row)
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_runs_side_by_side_checkpoint_every_epoch_and_resume_to_the_same_result(tmp_path, tiny_set, tiny_stats,
                                                                                 tiny_params, capsys):
    from foldwise.training.resume import Checkpoints

    p = dataclasses.replace(tiny_params, epochs=6, compare=("baseline", "dropout"))
    whole = sequential(tiny_set, tiny_stats, p)
    with LocalFanout(2, p.threads) as fanout, pytest.raises(KeyboardInterrupt):
        run_crossval(arrays(tiny_set, tiny_stats), 3, p, StopAtEpoch(2), Checkpoints("crossval", "k", tmp_path),
                     fanout=fanout)
    capsys.readouterr()
    with LocalFanout(2, p.threads) as fanout:
        resumed = run_crossval(arrays(tiny_set, tiny_stats), 3, p, Order(), Checkpoints("crossval", "k", tmp_path),
                               fanout=fanout)
    # the first run had checkpointed at least its first epoch when it was stopped, in its worker
    assert re.search(r"^resuming baseline fold 0 after epoch [1-6]$", capsys.readouterr().err, re.M)
    assert_same(whole, resumed)

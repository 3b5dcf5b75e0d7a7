"""Crossval on Ray: the same tables as in one process, on a local Ray, on two nodes, with GPUs assigned.

Real Ray (local instances and a ``ray.cluster_utils.Cluster`` of two nodes on this machine), real
training on the conftest data. Ray takes seconds to start, so these are marked slow.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import pytest
import torch

from foldwise.core.errors import UserError
from foldwise.data.batches import Preloaded, SplitArrays
from foldwise.data.normalize import to_inputs
from foldwise.training.callbacks import Monitor
from foldwise.training.crossval import run_crossval
from foldwise.training.fanout import RayFanout, RaySettings, ray_from_env
from foldwise.training.resume import Checkpoints
from tests.conftest import Interrupted, Killed


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    assert ray_from_env({}) is None and ray_from_env({"FOLDWISE_RAY": "off"}) is None
    assert ray_from_env({"FOLDWISE_RAY": "local"}) == RaySettings("local", 1.0, None)
    assert ray_from_env({"FOLDWISE_RAY": "10.0.0.5:6379", "FOLDWISE_RAY_CPUS": "2",
                         "FOLDWISE_RAY_GPUS": "0.25"}) == RaySettings("10.0.0.5:6379", 2.0, 0.25)
    for name, value in (("FOLDWISE_RAY_CPUS", "two"), ("FOLDWISE_RAY_CPUS", "0"), ("FOLDWISE_RAY_CPUS", "1.5"),
                        ("FOLDWISE_RAY_GPUS", "-1"), ("FOLDWISE_RAY_GPUS", "1.5")):
        with pytest.raises(UserError, match=rf"^{name}=.*is not valid; "):
            ray_from_env({"FOLDWISE_RAY": "local", name: value})


def arrays(tiny_set, tiny_stats) -> SplitArrays:
    return SplitArrays(tiny_set.images.numpy(), tiny_set.labels.numpy(), tiny_stats)


def sequential(tiny_set, tiny_stats, p, threads: int = 1, monitor=None):
    """The runs in this process with ``threads`` torch threads, as a Ray run gets them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
        return run_crossval(Preloaded(x, tiny_set.labels), 3, p, monitor)
    finally:
        torch.set_num_threads(before)


def assert_same(a, b) -> None:
    """Equal tables, summary and kept fold models, bit for bit, wall-clock seconds aside."""
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"),
                                  check_exact=True)
    pd.testing.assert_frame_equal(a.runs, b.runs, check_exact=True)
    assert a.summary == b.summary
    assert list(a.weights) == list(b.weights) and a.weights and a.kept_note == b.kept_note
    assert all(torch.equal(a.weights[k][n], w[n]) for k, w in b.weights.items() for n in w)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs and 2 logical GPUs (declared; there is no CUDA here)."""
    ray = pytest.importorskip("ray")  # the optional extra `make test` installs
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


class Order(Monitor):
    def __init__(self):
        self.events = []

    def on_epoch_end(self, row):
        self.events.append(("epoch", row["variant"], row["fold"], row["epoch"]))

    def on_resume(self, rows):
        self.events.extend(("resumed", r["variant"], r["fold"], r["epoch"]) for r in rows)

    def on_fold_end(self, row):
        self.events.append(("fold", row["variant"], row["fold"]))


def console_lines(fanout: RayFanout, compared: tuple[str, ...], folds: int = 2) -> list[str]:
    """The line the driver prints for each finished run: where it ran (and its GPUs, when it had some)."""
    runs = [(v, f) for v in compared for f in range(folds)]
    lines = []
    for name, w in sorted(fanout.placements.items()):
        variant, fold = runs[int(name.removeprefix("run"))]
        gpu = f", CUDA_VISIBLE_DEVICES={w['cuda_visible_devices']}" if fanout.gpus > 0 else ""
        lines.append(f"{variant} fold {fold}: ran on {w['host']} (node {w['node'][:8]}, pid {w['pid']}, "
                     f"{w['device']}{gpu})")
    return lines


@pytest.mark.slow
def test_ray_crossval_gives_the_sequential_tables_bit_for_bit(local_ray, tiny_set, tiny_stats, tiny_params, capsys):
    """2 workers x 1 thread each vs one process at 1 thread; the monitor sees the sequential order."""
    p = dataclasses.replace(tiny_params, epochs=3)
    on_ray = Order()
    alone = sequential(tiny_set, tiny_stats, p)
    with RayFanout(RaySettings("local", cpus=1, gpus=0)) as fanout:
        fanned = run_crossval(arrays(tiny_set, tiny_stats), 3, p, on_ray, fanout=fanout)
    assert_same(alone, fanned)
    assert alone.history.train_loss.nunique() == len(alone.history)  # no degenerate tables
    pids = {where["pid"] for where in fanout.placements.values()}
    assert len(fanout.placements) == 6 and len(pids) == 2  # two workers shared the six runs
    order = on_ray.events
    runs = [(v, f) for v in p.compared for f in range(2)]
    assert [e[1:] for e in order if e[0] == "fold"] == runs  # in the sequential order, whatever finished first
    assert [e[1:3] for e in order if e[0] == "epoch"] == [r for r in runs for _ in range(3)]
    printed = capsys.readouterr().err.splitlines()
    assert len(console_lines(fanout, p.compared)) == 6 and set(console_lines(fanout, p.compared)) <= set(printed)
    assert "CUDA_VISIBLE_DEVICES" not in "".join(printed)


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.slow
def test_a_task_trains_the_sequential_run_and_says_where_it_ran(local_ray, tiny_set, tiny_stats, tiny_params,
                                                                 monkeypatch):
    """``train_task`` called in this process, as a Ray worker calls it: the one-process run's row,
    history and weights, at the thread count asked for, and where it ran (here: this node, host and pid)."""
    import os
    import socket

    import ray

    from foldwise.training.crossval import RunSpec, make_folds, train_run
    from foldwise.training.fanout import train_task

    data = arrays(tiny_set, tiny_stats)
    fold = make_folds(tiny_set.labels.numpy(), tiny_params.k_folds, tiny_params.seed)[1]
    spec = RunSpec(3, "l2", 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        row, history, weights = train_run(data.to_source(torch.device("cpu")), 3, tiny_params, spec, fold)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        for gpus in (0.0, 0.5):
            torch.set_num_threads(2)
            started = time.time()
            (row2, history2, weights2), where = train_task(data, 3, tiny_params, spec, fold, None, 1, gpus)
            assert torch.get_num_threads() == 1
            assert _without_seconds([row2]) == _without_seconds([row])
            assert _without_seconds(history2) == _without_seconds(history) and len(history) == 2
            assert list(weights2) == list(weights) and all(torch.equal(weights2[n], weights[n]) for n in weights)
            assert where["node"] == ray.get_runtime_context().get_node_id()
            assert (where["host"], where["pid"], where["device"]) == (socket.gethostname(), os.getpid(), "cpu")
            assert where["cpus"] is None  # not a Ray task: nothing assigned (a task's are pinned below)
            assert where["cuda_visible_devices"] == ("1" if gpus else None)  # only a GPU run reads it
            assert started <= where["start"] <= where["end"] <= time.time()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_describe_names_the_cluster_and_each_runs_share(local_ray):
    with RayFanout(RaySettings("local", cpus=1, gpus=None)) as fanout:
        assert fanout.describe() == "ray (1 nodes, 2 CPUs, 2 GPUs; 1 CPU and 1 GPU per run)"
        assert fanout.device_type == "cuda"  # GPUs there and none asked for: one per run
    with RayFanout(RaySettings("local", cpus=2, gpus=0.5)) as fanout:
        assert fanout.describe() == "ray (1 nodes, 2 CPUs, 2 GPUs; 2 CPU and 0.5 GPU per run)"


@pytest.mark.slow
def test_concurrent_runs_on_logical_gpus_see_distinct_cuda_visible_devices(local_ray, tiny_set, tiny_stats,
                                                                          tiny_params, capsys):
    p = dataclasses.replace(tiny_params, epochs=3)
    with RayFanout(RaySettings("local", cpus=1, gpus=1)) as fanout:
        assert fanout.device_type == "cuda"
        run_crossval(arrays(tiny_set, tiny_stats), 3, p, fanout=fanout)
    places = list(fanout.placements.values())
    assert {w["cuda_visible_devices"] for w in places} == {"0", "1"}
    overlapping = [(a, b) for i, a in enumerate(places) for b in places[i + 1:]
                   if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping  # two GPUs, six runs: some ran at the same time...
    assert all(a["cuda_visible_devices"] != b["cuda_visible_devices"] for a, b in overlapping)  # ...never on one
    printed = capsys.readouterr().err.splitlines()
    assert set(console_lines(fanout, p.compared)) <= set(printed) and ", CUDA_VISIBLE_DEVICES=" in "".join(printed)


@pytest.mark.slow
def test_an_interrupted_fan_out_resumes_from_the_runs_that_returned(local_ray, tmp_path, tiny_set, tiny_stats,
                                                                   tiny_params):
    p = tiny_params
    split = arrays(tiny_set, tiny_stats)
    with RayFanout(RaySettings("local", cpus=1, gpus=0)) as fanout:
        with pytest.raises(Interrupted):  # killed once two runs were saved
            run_crossval(split, 3, p, checkpoints=Killed("crossval", "k", tmp_path, n=2), fanout=fanout)
        saved = sorted(f.stem for f in (tmp_path / "crossval" / "k").glob("run*.pt"))
        assert len(saved) == 2
        monitor = Order()
        resumed = run_crossval(split, 3, p, monitor, Checkpoints("crossval", "k", tmp_path), fanout)
    assert len(fanout.placements) == 6  # two returned before the kill; the second call trained the four others
    assert_same(sequential(tiny_set, tiny_stats, p), resumed)
    assert sum(e[0] == "resumed" for e in monitor.events) == 2 * p.epochs


@pytest.mark.slow
def test_errors_in_a_task_come_back_as_themselves(local_ray, tiny_set, tiny_stats, tiny_params):
    bad = SplitArrays(tiny_set.images.numpy(), tiny_set.labels.numpy(), {"mean": [0.3, 0.3], "std": [0.3]})
    with RayFanout(RaySettings("local", cpus=1, gpus=0)) as fanout, \
            pytest.raises(ValueError, match="^stats have 2 channels, images have 1$"):
        run_crossval(bad, 3, tiny_params, fanout=fanout)


@pytest.mark.slow
def test_a_run_needing_more_than_the_cluster_has_is_refused(local_ray):
    with pytest.raises(UserError, match=r"^FOLDWISE_RAY_CPUS=4, but the Ray cluster has 2 CPUs in all"):
        RayFanout(RaySettings("local", cpus=4)).__enter__()


def test_a_split_too_big_to_preload_is_refused_before_ray_starts(tmp_path, tiny_params):
    from foldwise.data.prepare import prepare
    from foldwise.training.fanout import open_train
    from tests.conftest import CLASSES, make_images

    prepare({"train": make_images(60), "test": make_images(30, seed=1)}, tuple(CLASSES), tmp_path, 10, 0, seed=0)
    stats = {"mean": [0.3], "std": [0.3]}
    assert len(open_train(tmp_path, stats, tiny_params)) == 50
    with pytest.raises(UserError, match=r"^FOLDWISE_RAY: each Ray run holds the train split preloaded \(0 MB as "
                                        r"float32\), more than memory_budget_mb=0; raise memory_budget_mb"):
        open_train(tmp_path, stats, dataclasses.replace(tiny_params, memory_budget_mb=0))


def test_a_split_of_exactly_the_budget_fans_out_with_its_stats(tmp_path, tiny_params):
    """128 images of 1 x 64 x 64 are exactly 2 MiB as float32: a budget of 2 takes them."""
    from foldwise.data.prepare import prepare
    from foldwise.training.fanout import open_train
    from tests.conftest import CLASSES, make_images

    prepare({"train": make_images(158, size=64), "test": make_images(30, size=64, seed=1)}, tuple(CLASSES),
            tmp_path, 30, 0, seed=0)
    stats = {"mean": [0.3], "std": [0.3]}
    split = open_train(tmp_path, stats, dataclasses.replace(tiny_params, memory_budget_mb=2))
    assert split.float_mb == 2.0 and split.stats == stats
    with pytest.raises(UserError, match=r"\(2 MB as float32\), more than memory_budget_mb=1;"):
        open_train(tmp_path, stats, dataclasses.replace(tiny_params, memory_budget_mb=1))


def test_settings_errors_say_what_is_valid_word_for_word(monkeypatch):
    cpus = ("a number of CPUs per run above 0: a fraction below 1, else a whole number (e.g. 1 or 2)")
    gpus = ("0 (CPU runs), a fraction below 1 (0.25 = four runs per GPU) or a whole number of GPUs per run")
    for name, valid in (("FOLDWISE_RAY_CPUS", cpus), ("FOLDWISE_RAY_GPUS", gpus)):
        with pytest.raises(UserError) as error:
            ray_from_env({"FOLDWISE_RAY": "local", name: "2.5"})
        assert str(error.value) == f"{name}='2.5' is not valid; use {valid}"
    assert ray_from_env({"FOLDWISE_RAY": "local", "FOLDWISE_RAY_GPUS": "0"}).gpus == 0.0  # CPU runs on a GPU node
    assert ray_from_env({"FOLDWISE_RAY": "LOCAL"}).address == "local"
    assert ray_from_env({"FOLDWISE_RAY": "Head-Node:6379"}).address == "Head-Node:6379"  # an address as given
    monkeypatch.setenv("FOLDWISE_RAY", "local")
    monkeypatch.setenv("FOLDWISE_RAY_CPUS", "2")
    assert ray_from_env() == RaySettings("local", 2.0, None)  # the process's environment by default


def test_without_ray_installed_the_message_says_how_to_install_it(monkeypatch):
    import sys

    from foldwise.training.fanout import _check_installed

    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a package that is not there
    with pytest.raises(UserError) as error:
        _check_installed()
    assert str(error.value) == ("FOLDWISE_RAY is set but Ray is not installed; install it with "
                                "`pip install -e '.[ray]'` (in this project's .venv), or unset FOLDWISE_RAY")


@pytest.mark.slow
def test_each_run_holds_the_cpus_it_asks_for(local_ray, tiny_set, tiny_stats, tiny_params):
    """Two CPUs per run on a two-CPU Ray: one run at a time, never two side by side."""
    p = dataclasses.replace(tiny_params, compare=("baseline",))
    with RayFanout(RaySettings("local", cpus=2, gpus=0)) as fanout:
        run_crossval(arrays(tiny_set, tiny_stats), 3, p, fanout=fanout)
    places = sorted(fanout.placements.values(), key=lambda w: w["start"])
    assert len(places) == 2 and places[0]["end"] <= places[1]["start"]
    assert [w["cpus"] for w in places] == [2.0, 2.0]  # what Ray held for each (the order alone can be luck)


@pytest.mark.slow
def test_a_run_whose_worker_dies_fails_the_fan_out_at_once_and_never_runs_again(local_ray, tiny_set, tiny_stats,
                                                                                 tiny_params):
    """A worker killed mid-run (out of memory, a lost node): the stage stops with Ray's error instead of
    Ray quietly running that fold again from its start, up to three times (its default retries)."""
    import threading

    import psutil
    import ray

    def running() -> set[int]:  # this Ray's workers (children of its raylet, started by this process) in a run
        found = set()
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.cmdline()[:1] == ["ray::train_task"]:
                    found.add(proc.pid)
            except psutil.Error:  # gone meanwhile
                pass
        return found

    p = dataclasses.replace(tiny_params, compare=("baseline",), epochs=400)  # long enough to be caught running
    failed: list[BaseException] = []

    def fan_out() -> None:
        try:
            with RayFanout(RaySettings("local", cpus=1, gpus=0)) as fanout:
                run_crossval(arrays(tiny_set, tiny_stats), 3, p, fanout=fanout)
        except BaseException as exc:  # noqa: BLE001 - what the stage would see
            failed.append(exc)

    thread = threading.Thread(target=fan_out)
    thread.start()
    deadline = time.monotonic() + 60
    while not (workers := running()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers, "no Ray worker ran train_task within 60 s"
    for pid in workers:
        psutil.Process(pid).kill()
    later: set[int] = set()
    while thread.is_alive() and time.monotonic() < deadline:
        later |= running() - workers
        time.sleep(0.1)
    thread.join(timeout=30)
    assert not later, "Ray ran the killed run again"
    assert len(failed) == 1 and isinstance(failed[0], ray.exceptions.RayError), failed

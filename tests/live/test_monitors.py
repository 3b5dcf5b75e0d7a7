"""The live monitor without a visdom server: settings, throttling, the event log, and servers that fail.

A real visdom server, the browser and replay are in tests/e2e/test_live.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from foldwise.live.monitors import env_name, monitor_from_env, parse_every, server_url
from foldwise.live.visdom_monitor import VisdomMonitor, run_label
from foldwise.reporting.figures import examples_grid
from foldwise.training.callbacks import ConsoleMonitor, Monitor, Monitors
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model
from tests.conftest import train_valid


def refused_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def hanging_url():
    """A real socket that accepts connections and never answers (the case where visdom's client hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def read_log(path: Path) -> list[tuple[str, dict]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def points(log: list[tuple[str, dict]], win: str) -> dict[str, int]:
    """Points per trace of a line window, as the log's create + append messages add them up."""
    counts: dict[str, int] = {}
    for _endpoint, msg in log:
        if msg.get("win") != win:
            continue
        for trace in msg["data"]:
            name = msg.get("name") or trace.get("name")
            counts[name] = counts.get(name, 0) + len(trace["x"])
    return counts


def train_with(monitor: Monitor, tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    seed_everything(1)
    model = build_model((1, 12, 12), 3, tiny_params)
    monitor.start({"stage": "crossval", "params": tiny_params.to_dict(), "device": "cpu",
                   "classes": ["a", "b", "c"], "total_epochs": tiny_params.epochs})
    result = fit(model, train, valid, tiny_params, seed=1,
                 monitor=monitor, tags={"variant": "baseline", "fold": 0})
    monitor.close()
    return result


def test_server_url_from_the_environment_variable(monkeypatch):
    monkeypatch.delenv("FOLDWISE_VISDOM_PORT", raising=False)
    monkeypatch.delenv("FOLDWISE_VISDOM_HOST", raising=False)
    for off in (None, "", "0", "off", "false", "no"):
        assert server_url(off) is None
    assert server_url("on") == server_url("1") == "http://127.0.0.1:8097"
    monkeypatch.setenv("FOLDWISE_VISDOM_PORT", "9001")
    assert server_url("on") == "http://127.0.0.1:9001"
    monkeypatch.setenv("FOLDWISE_VISDOM_HOST", "0.0.0.0")  # the server listens everywhere; we talk to it locally
    assert server_url("on") == "http://127.0.0.1:9001"
    assert server_url("box.lan:8097") == "http://box.lan:8097"
    assert server_url("https://viz.example.org/") == "https://viz.example.org"
    with pytest.raises(ValueError, match="FOLDWISE_VISDOM='ftp://x' is not valid; use on, off or a URL"):
        server_url("ftp://x")


@pytest.mark.slow  # three Python processes importing torch: 15-20 s
def test_env_name_is_the_experiment_or_the_runs_start(tmp_path):
    assert env_name({"FOLDWISE_VISDOM_ENV": "mine", "DVC_EXP_NAME": "x"}) == "mine"
    assert env_name({"DVC_EXP_NAME": "funny-dado"}) == "foldwise_funny-dado"
    # two stages started by one `dvc` command, a second apart, share the name of its start time
    code = "from foldwise.live.monitors import env_name; print(env_name({}))"
    dvc = tmp_path / "dvc"  # stands in for dvc: a parent process whose command is `dvc`
    dvc.write_text(f'#!/bin/sh\nsleep 1.1\n{sys.executable} -c "{code}"; sleep 1.1; '
                   f'sh -c \'{sys.executable} -c "{code}"\'\n')
    dvc.chmod(0o755)
    out = subprocess.run([str(dvc)], capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2 and out[0] == out[1]
    assert out[0].startswith("foldwise_20") and len(out[0]) == len("foldwise_2026-11-21-101500")
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert alone != out[0]  # without dvc: the stage's own start, two seconds later


def test_every_setting(monkeypatch):
    assert parse_every(None) == (None, 1.0)
    assert parse_every("2.5s") == (None, 2.5)
    assert parse_every("25") == (25, None)
    for bad in ("0", "-3", "0s", "fast", "1.5"):
        with pytest.raises(ValueError, match="FOLDWISE_VISDOM_EVERY=.* use a number of steps"):
            parse_every(bad)


def test_monitor_from_env_off_on_and_broken(tmp_path, capfd):
    assert type(monitor_from_env("train", environ={})) is ConsoleMonitor
    bad = monitor_from_env("train", environ={"FOLDWISE_VISDOM": "ftp://x"})
    assert type(bad) is ConsoleMonitor  # a bad setting never stops the stage
    assert capfd.readouterr().err.count("warning: visdom: live view off (FOLDWISE_VISDOM='ftp://x'") == 1
    on = monitor_from_env("train", predictions=True, environ={
        "FOLDWISE_VISDOM": refused_url(), "FOLDWISE_VISDOM_ENV": "e", "DVC_ROOT": str(tmp_path)})
    assert isinstance(on, Monitors) and on.wants_steps and on.wants_predictions
    live = on.monitors[1]
    assert isinstance(live, VisdomMonitor) and live.log == tmp_path / ".foldwise/visdom/logs/e.jsonl"
    on.close()


@pytest.mark.parametrize("server", ["refused", "hanging"])
def test_a_failing_server_costs_one_warning_and_the_log_keeps_everything(
        server, hanging_url, tmp_path, tiny_set, tiny_stats, tiny_params, capfd):
    url = refused_url() if server == "refused" else hanging_url
    log = tmp_path / "run.jsonl"
    monitor = VisdomMonitor(url, "env", log, "crossval", every=(1, None))
    result = train_with(monitor, tiny_set, tiny_stats, tiny_params)
    err = capfd.readouterr().err
    assert err.count("warning") == 1 and f"no answer from {url}" in err and str(log) in err
    assert len(result.history) == tiny_params.epochs
    entries = read_log(log)
    steps = tiny_params.epochs * -(-60 // tiny_params.batch_size)
    assert points(entries, "crossval_step_loss") == {"baseline fold 0": steps}  # every step, as asked
    assert points(entries, "crossval_lr") == {"baseline fold 0": steps}
    for win in ("crossval_loss", "crossval_accuracy"):
        assert points(entries, win) == {"baseline fold 0 train": tiny_params.epochs,
                                        "baseline fold 0 valid": tiny_params.epochs}
    info = [msg for _, msg in entries if msg["win"] == "crossval_info"]
    assert "finished" in info[-1]["data"][0]["content"]
    assert all(endpoint in ("events", "update") and msg["eid"] == "env" for endpoint, msg in entries)


def test_step_points_are_the_mean_loss_since_the_last_point(tmp_path, tiny_set, tiny_stats, tiny_params):
    class Losses(Monitor):
        wants_steps = True

        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_step(self, tags, epoch, loss, lr):
            self.losses.append(float(loss))

    log = tmp_path / "run.jsonl"
    recorder = Losses()
    train_with(Monitors(recorder, VisdomMonitor(refused_url(), "env", log, "crossval", every=(3, None))),
               tiny_set, tiny_stats, tiny_params)
    sent = [y for _, msg in read_log(log) if msg["win"] == "crossval_step_loss" for y in msg["data"][0]["y"]]
    losses = recorder.losses
    assert len(sent) == len(losses) // 3
    assert sent == pytest.approx([np.mean(losses[i:i + 3]) for i in range(0, 3 * len(sent), 3)], rel=1e-5)


def test_run_labels_name_the_fold_or_the_final_model():
    assert run_label({"variant": "l2", "fold": 3}) == "l2 fold 3"
    assert run_label({"variant": "l2"}) == "final l2"


def test_examples_grid_titles_each_image_and_marks_mistakes():
    images = np.zeros((10, 1, 12, 12), dtype=np.uint8)
    images[:, :, 4:8, 4:8] = 255
    actual, predicted = np.arange(10) % 3, np.array([0, 1, 2, 0, 1, 2, 1, 1, 2, 0])
    grid = examples_grid(images, actual, predicted, ["a", "b", "c"])
    assert grid.dtype == np.uint8 and grid.shape[0] == 3 and grid.shape[1] > 100 and grid.shape[2] > 400
    red = (grid[0] > 150) & (grid[1] < 110) & (grid[2] < 110)
    assert red.sum() > 20  # the wrong guesses' titles are red
    right = examples_grid(images[:3], actual[:3], actual[:3], ["a", "b", "c"])
    assert (((right[0] > 150) & (right[1] < 110) & (right[2] < 110)).sum()) == 0


def test_an_unwritable_log_costs_one_warning_and_nothing_else(tmp_path, tiny_set, tiny_stats, tiny_params, capfd):
    log = tmp_path / "a-directory.jsonl"
    log.mkdir()  # opening it for writing fails
    result = train_with(VisdomMonitor(refused_url(), "env", log, "crossval"), tiny_set, tiny_stats, tiny_params)
    err = capfd.readouterr().err
    assert len(result.history) == tiny_params.epochs
    assert err.count("warning") == 1 and f"cannot write the event log {log}" in err

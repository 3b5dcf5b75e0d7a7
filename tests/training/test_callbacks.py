"""Monitors: hooks reach the monitors that want them, and a failing monitor never stops training."""

from __future__ import annotations

import dataclasses

import torch

from foldwise.data.batches import Preloaded
from foldwise.data.normalize import to_inputs
from foldwise.training.callbacks import ConsoleMonitor, Monitor, Monitors
from foldwise.training.crossval import run_crossval
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model
from tests.conftest import train_valid


class Recorder(Monitor):
    wants_steps = True
    wants_predictions = True

    def __init__(self) -> None:
        self.steps, self.rows, self.predictions, self.folds = [], [], [], []

    def on_step(self, tags, epoch, loss, lr):
        self.steps.append((dict(tags), epoch, float(loss), lr))

    def on_epoch_end(self, row):
        self.rows.append(row)

    def on_predictions(self, tags, labels, predicted):
        self.predictions.append((labels.clone(), predicted.clone()))

    def on_fold_end(self, row):
        self.folds.append(row)


class Broken(Monitor):
    wants_steps = True

    def on_step(self, tags, epoch, loss, lr):
        raise RuntimeError("step hook bug")

    def on_epoch_end(self, row):
        raise RuntimeError("epoch hook bug")


def test_fit_calls_every_hook_with_what_it_promises(tiny_set, tiny_stats, tiny_params):
    train, valid = train_valid(tiny_set, tiny_stats)
    recorder = Recorder()
    model = build_model((1, 12, 12), 3, tiny_params)
    result = fit(model, train, valid, tiny_params, seed=1, monitor=recorder, tags={"variant": "baseline"})
    steps_per_epoch = -(-60 // tiny_params.batch_size)
    assert len(recorder.steps) == tiny_params.epochs * steps_per_epoch
    # x axis in epochs: the last batch of epoch e is at e
    assert [round(s[1], 6) for s in recorder.steps[:steps_per_epoch]] == \
        [round((i + 1) / steps_per_epoch, 6) for i in range(steps_per_epoch)]
    assert recorder.steps[-1][1] == tiny_params.epochs
    assert all(s[0] == {"variant": "baseline"} for s in recorder.steps)
    assert recorder.rows == result.history
    # the predictions are the ones the row's accuracy was computed from
    for (labels, predicted), row in zip(recorder.predictions, result.history):
        assert (labels == predicted).float().mean().item() == row["valid_acc"]


def test_a_failing_monitor_warns_once_and_training_is_unchanged(tiny_set, tiny_stats, tiny_params, capfd):
    train, valid = train_valid(tiny_set, tiny_stats)
    seed_everything(1)
    plain = fit(build_model((1, 12, 12), 3, tiny_params), train, valid, tiny_params, seed=1)
    capfd.readouterr()
    seed_everything(1)
    broken = fit(build_model((1, 12, 12), 3, tiny_params), train, valid, tiny_params, seed=1,
                 monitor=Monitors(Broken(), Recorder()))
    err = capfd.readouterr().err
    assert [r["valid_loss"] for r in broken.history] == [r["valid_loss"] for r in plain.history]
    assert err.count("warning:") == 1  # one per broken monitor, not one per call
    assert "Broken.on_step failed (step hook bug); training continues" in err


def test_monitors_forward_steps_only_to_monitors_that_want_them(tiny_set, tiny_stats, tiny_params, capfd):
    class NoSteps(Recorder):
        wants_steps = False
        wants_predictions = False

    quiet, loud = NoSteps(), Recorder()
    both = Monitors(ConsoleMonitor(), quiet, loud)
    assert both.wants_steps and both.wants_predictions
    assert not Monitors(ConsoleMonitor(), quiet).wants_steps  # fit then skips the per-batch call entirely
    train, valid = train_valid(tiny_set, tiny_stats)
    fit(build_model((1, 12, 12), 3, tiny_params), train, valid, tiny_params, seed=1, monitor=both)
    assert quiet.steps == [] and quiet.predictions == [] and len(quiet.rows) == tiny_params.epochs
    assert len(loud.steps) > 0 and len(loud.predictions) == tiny_params.epochs
    assert capfd.readouterr().err.count(" epoch ") == tiny_params.epochs  # the console line per epoch


def test_crossval_reports_each_finished_fold(tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, compare=("baseline", "l2"), epochs=1)
    recorder = Recorder()
    result = run_crossval(Preloaded(x, tiny_set.labels), 3, p, recorder)
    assert [(r["variant"], r["fold"]) for r in recorder.folds] == \
        [(v, f) for v in ("baseline", "l2") for f in range(p.k_folds)]
    assert recorder.folds == result.runs.to_dict("records")

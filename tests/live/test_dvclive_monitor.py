"""dvclive's files: one curve per variant and metric, re-logged on resume, never breaking training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from foldwise.data.batches import Preloaded
from foldwise.data.normalize import to_inputs
from foldwise.live.dvclive_monitor import DvcLiveMonitor
from foldwise.live.monitors import monitor_from_env
from foldwise.training.crossval import run_crossval


@pytest.fixture
def dvc_project(tmp_path, monkeypatch):
    """A real DVC project (no git) to run in: dvclive opens the repository it is in."""
    from dvc.repo import Repo

    Repo.init(tmp_path, no_scm=True).close()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def read_tsv(path):
    header, *rows = path.read_text().splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


def row(variant, fold, epoch, acc):
    return {"variant": variant, "fold": fold, "epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": acc,
            "valid_loss": 1.5 / epoch, "valid_acc": acc, "lr": 0.01, "seconds": 12.3}


def test_each_variant_is_one_curve_over_its_folds_without_times(dvc_project):
    monitor = DvcLiveMonitor(dvc_project / "live", group_by=("variant",))
    for fold in (0, 1):
        for epoch in (1, 2):
            monitor.on_epoch_end(row("baseline", fold, epoch, 0.5 + 0.1 * epoch))
    monitor.on_epoch_end(row("l2", 0, 1, 0.4))
    monitor.close()
    header, rows = read_tsv(dvc_project / "live/plots/metrics/baseline/valid_acc.tsv")
    assert header == ["step", "valid_acc"]  # no timestamp: the files' hash is in dvc.lock
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]  # fold 1 continues at step 3
    assert [float(r[1]) for r in rows] == pytest.approx([0.6, 0.7, 0.6, 0.7])
    assert read_tsv(dvc_project / "live/plots/metrics/l2/valid_acc.tsv")[1] == [["1", "0.4"]]
    summary = json.loads((dvc_project / "live/metrics.json").read_text())
    assert summary["l2"]["valid_acc"] == 0.4 and summary["baseline"]["lr"] == 0.01
    assert "seconds" not in json.dumps(summary)
    assert not (dvc_project / "dvc.yaml").exists()  # dvc.yaml stays hand-written


def test_files_grow_every_epoch(dvc_project):
    monitor = DvcLiveMonitor(dvc_project / "live")
    monitor.on_epoch_end(row("l2", None, 1, 0.5))
    assert len(read_tsv(dvc_project / "live/plots/metrics/train_loss.tsv")[1]) == 1
    monitor.on_epoch_end(row("l2", None, 2, 0.6))
    assert len(read_tsv(dvc_project / "live/plots/metrics/train_loss.tsv")[1]) == 2
    assert json.loads((dvc_project / "live/metrics.json").read_text())["step"] == 2


def test_resumed_crossval_writes_the_same_files_as_an_uninterrupted_one(dvc_project, tiny_set, tiny_stats,
                                                                         tiny_params):
    from foldwise.training.resume import Checkpoints
    from tests.conftest import Interrupted, Killed

    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, epochs=3)
    run_crossval(Preloaded(x, tiny_set.labels), 3, p, DvcLiveMonitor(dvc_project / "whole", ("variant",)))
    with pytest.raises(Interrupted):
        run_crossval(Preloaded(x, tiny_set.labels), 3, p, DvcLiveMonitor(dvc_project / "resumed", ("variant",)),
                     checkpoints=Killed("crossval", "k", dvc_project / "ckpt", n=6))
    # DVC deletes a stage's outputs before it runs again: the resumed run starts from empty files
    import shutil

    shutil.rmtree(dvc_project / "resumed")
    run_crossval(Preloaded(x, tiny_set.labels), 3, p, DvcLiveMonitor(dvc_project / "resumed", ("variant",)),
                 checkpoints=Checkpoints("crossval", "k", dvc_project / "ckpt"))
    files = sorted(f.relative_to(dvc_project / "whole") for f in (dvc_project / "whole").rglob("*.*"))
    assert len(files) == 1 + len(p.variants) * 5
    for name in files:
        assert (dvc_project / "resumed" / name).read_text() == (dvc_project / "whole" / name).read_text(), name


def test_a_broken_dvclive_never_stops_training(dvc_project, capsys):
    monitor = monitor_from_env("crossval", environ={}, live_dir=dvc_project / "live", group_by=("variant",))
    live = next(m for m in monitor.monitors if isinstance(m, DvcLiveMonitor))
    live.live.log_metric = None  # every call now raises TypeError
    monitor.on_epoch_end(row("baseline", 0, 1, 0.5))
    monitor.on_epoch_end(row("baseline", 0, 2, 0.6))
    err = capsys.readouterr().err
    assert err.count("warning: monitor DvcLiveMonitor.on_epoch_end failed") == 1  # once, then quiet
    assert "variant=baseline fold=0 epoch 2" in err  # the console monitor beside it carried on

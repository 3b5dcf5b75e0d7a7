import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from foldwise.data.batches import Preloaded
from foldwise.data.normalize import to_inputs
from foldwise.reporting.cvstats import paired_test, summarize
from foldwise.training.callbacks import Monitor
from foldwise.training.crossval import make_folds, run_crossval
from foldwise.training.engine import seed_everything
from foldwise.training.models import build_model
from foldwise.training.resume import Checkpoints
from tests.conftest import Interrupted, Killed, RecordingSource


def test_folds_are_stratified_disjoint_and_seeded():
    labels = np.arange(60) % 3
    folds = make_folds(labels, 4, seed=0)
    assert len(folds) == 4
    valid = np.concatenate([v for _, v in folds])
    assert sorted(valid) == list(range(60))  # every image validated exactly once
    for train, val in folds:
        assert not set(train) & set(val)
        assert set(np.bincount(labels[val])) == {5}
    again = make_folds(labels, 4, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_folds_need_k_images_in_every_class_present():
    labels = np.array([0, 0, 2, 2, 2])  # class 1 has no image: it does not count
    assert len(make_folds(labels, 2, seed=0)) == 2
    with pytest.raises(ValueError, match=r"^k_folds: 2 is larger than the smallest class \(label 1: 1 training "):
        make_folds(np.array([0, 0, 1, 2, 2]), 2, seed=0)


def test_too_few_images_per_class_is_explained():
    with pytest.raises(ValueError, match=r"k_folds: 5 is larger than the smallest class \(label 0: 2 training "
                                         r"images\); valid: 2 to 2"):
        make_folds(np.array([0, 0, 1, 1, 1, 1, 1, 1]), 5, seed=0)


def test_run_crossval_covers_every_variant_and_fold_on_the_same_folds(tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    result = run_crossval(Preloaded(x, tiny_set.labels), 3, tiny_params)
    p = tiny_params
    assert list(result.runs.columns) == [
        "variant", "fold", "final_valid_acc", "final_valid_loss", "best_valid_acc", "best_valid_loss",
        "best_epoch", "epochs", "stopped_early"]  # no wall-clock seconds: folds.csv is committed
    assert [(r.variant, r.fold) for r in result.runs.itertuples()] == [
        (v, f) for v in p.variants for f in range(p.k_folds)]
    assert len(result.history) == len(p.variants) * p.k_folds * p.epochs
    # each fold row holds the values of its run's history (last epoch: no early stopping here)
    for row in result.runs.itertuples():
        runs = result.history[(result.history.variant == row.variant) & (result.history.fold == row.fold)]
        assert list(runs.epoch) == [1, 2] and row.epochs == 2
        assert row.final_valid_acc == runs.valid_acc.iloc[-1] and row.final_valid_loss == runs.valid_loss.iloc[-1]
        assert row.best_valid_acc == runs.valid_acc.max() and row.best_valid_loss == runs.valid_loss.min()
        assert row.best_epoch == runs.epoch[runs.valid_acc == runs.valid_acc.max()].iloc[0]
    assert result.summary == {"k_folds": 2, **summarize(result.runs)}
    for name, stats in result.summary["variants"].items():
        scores = result.runs[result.runs.variant == name].final_valid_acc
        assert stats["valid_acc_mean"] == pytest.approx(scores.mean(), abs=1e-6)


def test_a_variant_identical_to_baseline_gives_identical_runs(tiny_set, tiny_stats, tiny_params, capsys):
    """Paired runs: same folds, initial weights and batches, so every loss of every epoch is the same
    (accuracies alone are no proof: on easy data they all reach 1.0)."""
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    twin = dataclasses.replace(tiny_params, variants={"baseline": {}, "twin": {}})
    history = run_crossval(Preloaded(x, tiny_set.labels), 3, twin).history.drop(columns="seconds")
    base = history[history.variant == "baseline"].drop(columns="variant").reset_index(drop=True)
    same = history[history.variant == "twin"].drop(columns="variant").reset_index(drop=True)
    pd.testing.assert_frame_equal(base, same)
    err = capsys.readouterr().err  # each run's length and time go to the console, not to the outputs
    assert all(f"{v} fold {f}: 2 epochs in " in err for v in ("baseline", "twin") for f in (0, 1))
    assert base.train_loss.nunique() == len(base)  # losses that differ between folds and epochs


def test_every_variant_on_a_fold_starts_from_the_same_weights_and_batches_and_validates_on_that_fold(
        tiny_set, tiny_stats, tiny_params, monkeypatch):
    """The paired comparison, tensor by tensor: for every fold, each variant's initial weights and the
    order of its training batches are identical, its training images are the fold's training part and
    it is validated on exactly the held-out part."""
    import foldwise.training.crossval as crossval

    initial = []

    def build_and_record(*args, **kwargs):
        model = build_model(*args, **kwargs)
        initial.append([t.detach().clone() for t in model.state_dict().values()])
        return model

    monkeypatch.setattr(crossval, "build_model", build_and_record)
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    source = RecordingSource(x, tiny_set.labels)
    p = dataclasses.replace(tiny_params, k_folds=3)
    result = run_crossval(source, 3, p)
    folds = make_folds(tiny_set.labels.numpy(), 3, p.seed)
    runs = list(zip(result.runs.itertuples(), initial, zip(source.subsets[::2], source.subsets[1::2]),
                    strict=True))
    assert len(runs) == 9
    first = {}  # fold -> (weights, batch orders) of the first variant
    for row, weights, ((train_idx, train), (valid_idx, valid)) in runs:
        assert train.trained and not valid.trained  # shuffled for training; read in order for validation
        np.testing.assert_array_equal(train_idx, folds[row.fold][0])
        np.testing.assert_array_equal(valid_idx, folds[row.fold][1])
        assert torch.equal(valid.labels, tiny_set.labels[folds[row.fold][1]])
        orders = [o for o in train.orders if o is not None]
        assert len(orders) == p.epochs
        if row.fold not in first:
            first[row.fold] = (weights, orders)
            seed_everything(p.seed + row.fold)  # the documented start of fold f: seed + f
            by_hand = build_model((1, 12, 12), 3, p)
            assert all(torch.equal(a, b) for a, b in zip(weights, by_hand.state_dict().values(), strict=True))
            continue
        for a, b in zip(weights, first[row.fold][0], strict=True):
            assert torch.equal(a, b), f"{row.variant} fold {row.fold} starts from other weights"
        for a, b in zip(orders, first[row.fold][1], strict=True):
            assert torch.equal(a, b), f"{row.variant} fold {row.fold} sees other batches"
    assert not torch.equal(first[0][0][0], first[1][0][0])  # folds differ: the check can tell


def test_only_compared_variants_run_and_combinations_merge(tiny_set, tiny_stats, tiny_params):
    """``l2+dropout`` runs exactly as a variant spelling out both changes would."""
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, epochs=1, compare=("baseline", "l2+dropout"))
    result = run_crossval(Preloaded(x, tiny_set.labels), 3, p)
    assert list(dict.fromkeys(result.runs["variant"])) == ["baseline", "l2+dropout"]
    spelled = dataclasses.replace(p, variants={**p.variants, "both": {"weight_decay": 0.01, "dropout": 0.3}},
                                  compare=("baseline", "both"))
    both = run_crossval(Preloaded(x, tiny_set.labels), 3, spelled)
    merged = result.history.drop(columns=["seconds", "variant"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, both.history.drop(columns=["seconds", "variant"]).reset_index(drop=True))
    assert result.summary["variants"]["l2+dropout"] == both.summary["variants"]["both"]
    diffs = result.runs.final_valid_acc[2:].to_numpy() - result.runs.final_valid_acc[:2].to_numpy()
    assert result.summary["variants"]["l2+dropout"]["p_value"] == pytest.approx(paired_test(diffs, 2)[0], abs=1e-6)


def test_bad_variant_fails_before_any_training(tiny_set, tiny_stats, tiny_params, capsys):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, variants={**tiny_params.variants, "big": {"model": "vgg99"}})
    with pytest.raises(KeyError, match="unknown model 'vgg99'"):
        run_crossval(Preloaded(x, tiny_set.labels), 3, p, monitor=None)
    p = dataclasses.replace(tiny_params, variants={**tiny_params.variants, "aug": {"augment": True,
                                                                                   "augment_padding": 12}})
    with pytest.raises(ValueError, match="augment_padding: 12 is too large for 12x12 images; valid: 0 to 11"):
        run_crossval(Preloaded(x, tiny_set.labels), 3, p)


def test_interrupted_crossval_resumes_to_the_same_result(tmp_path, tiny_set, tiny_stats, tiny_params, capsys):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    # dropout and augmentation draw random numbers: resuming must restore every generator
    p = dataclasses.replace(tiny_params, epochs=3, variants={"baseline": {}, "dropout": {"dropout": 0.3},
                                                             "augment": {"augment": True}}, fold_models="all")
    whole = run_crossval(Preloaded(x, tiny_set.labels), 3, p)
    with pytest.raises(Interrupted):  # in the middle of dropout's first fold (runs have 3 epochs + done)
        run_crossval(Preloaded(x, tiny_set.labels), 3, p, checkpoints=Killed("crossval", "k1", tmp_path, n=10))
    capsys.readouterr()
    seen = Recorder()
    resumed = run_crossval(Preloaded(x, tiny_set.labels), 3, p, seen,
                           checkpoints=Checkpoints("crossval", "k1", tmp_path))
    err = capsys.readouterr().err
    assert "resuming dropout fold 0 after epoch 2\n" in err and err.count("resuming") == 1  # finished runs: done
    # finished runs are replayed, not repeated; the interrupted one continues at its third epoch
    assert seen.kinds == ["resume", "fold", "resume", "fold", "resume", "epoch", "fold",
                          *(["epoch"] * 3 + ["fold"]) * 3]
    assert seen.folds == whole.runs.to_dict("records")
    pd.testing.assert_frame_equal(resumed.runs, whole.runs)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), whole.history.drop(columns="seconds"))
    assert resumed.summary == whole.summary
    assert list(resumed.weights) == list(whole.weights) and len(whole.weights) == 6  # replayed runs keep theirs
    assert all(torch.equal(resumed.weights[k][n], w[n]) for k, w in whole.weights.items() for n in w)
    # monitors that keep files (dvclive) get every row once: the replayed ones first, then the new ones
    assert seen.kinds[:1] == ["resume"] and "epoch" in seen.kinds
    assert [(r["variant"], r["fold"], r["epoch"]) for r in seen.rows] == \
        [(r.variant, r.fold, r.epoch) for r in whole.history.itertuples()]
    Checkpoints("crossval", "k1", tmp_path).clear()
    assert not (tmp_path / "crossval").exists()


def test_crossval_keeps_the_chosen_variants_fold_models_bit_identical_run_to_run(tmp_path, tiny_set, tiny_stats,
                                                                                tiny_params):
    from foldwise.training.engine import evaluate
    from foldwise.training.model_files import save_fold_models

    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    data = Preloaded(x, tiny_set.labels)
    result = run_crossval(data, 3, tiny_params)  # fold_models: chosen (the default)
    chosen = result.summary["chosen"]
    assert list(result.weights) == [(chosen, 0), (chosen, 1)]
    assert result.kept_note == ("fold_models: chosen (crossval keeps the fold models of crossval's chosen variant, "
                                f"{chosen})")
    folds = make_folds(tiny_set.labels.numpy(), 2, tiny_params.seed)
    for (variant, fold), weights in result.weights.items():  # each is its fold's model, as it ended
        model = build_model((1, 12, 12), 3, tiny_params.for_variant(variant))
        model.load_state_dict(weights)
        row = result.runs[(result.runs.variant == variant) & (result.runs.fold == fold)].iloc[0]
        assert evaluate(model, data.subset(folds[fold][1])).accuracy == pytest.approx(row.final_valid_acc)
    again = run_crossval(data, 3, tiny_params)
    for name, r in (("a", result), ("b", again)):
        save_fold_models(tmp_path / name, r.weights, tiny_params, tiny_set.classes, tiny_stats, (1, 12, 12),
                         r.kept_note)
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*.pt"))
    assert len(files) == 2 and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
                                   for f in files)
    assert (tmp_path / "a/folds.json").read_bytes() == (tmp_path / "b/folds.json").read_bytes()
    every = run_crossval(data, 3, dataclasses.replace(tiny_params, fold_models="all", compare=("baseline", "l2")))
    assert list(every.weights) == [("baseline", 0), ("baseline", 1), ("l2", 0), ("l2", 1)]
    assert every.kept_note == "fold_models: all (crossval keeps the fold models of every compared variant)"
    none = run_crossval(data, 3, dataclasses.replace(tiny_params, fold_models="none", compare=("baseline",)))
    assert none.weights == {} and none.kept_note == "fold_models: none (crossval keeps no fold models)"


class Recorder(Monitor):
    def __init__(self):
        self.kinds, self.rows, self.folds = [], [], []

    def on_fold_end(self, row):
        self.kinds.append("fold")
        self.folds.append(row)

    def on_resume(self, rows):
        self.kinds.append("resume")
        self.rows.extend(rows)

    def on_epoch_end(self, row):
        self.kinds.append("epoch")
        self.rows.append(row)


def test_every_variant_in_params_yaml_runs_and_changes_what_it_claims(tiny_set, tiny_stats):
    from torch import nn

    from foldwise.core.params import load_params
    from foldwise.training.models import build_model
    from foldwise.training.optim import make_optimizer

    p = dataclasses.replace(load_params(Path(__file__).resolve().parents[2] / "params.yaml"),
                            epochs=1, batch_size=16, k_folds=2, compare=())
    base = p.for_variant("baseline")
    claims = {
        "baseline": lambda v: v == base,
        "l2": lambda v: make_optimizer(build_model((1, 12, 12), 3, v), v).param_groups[0]["weight_decay"] > 0,
        "l1": lambda v: v.l1 > 0,
        "dropout": lambda v: any(isinstance(m, nn.Dropout) for m in build_model((1, 12, 12), 3, v).modules()),
        "augment": lambda v: v.augment,
        "early_stop": lambda v: v.patience > 0,
        "batchnorm": lambda v: any(isinstance(m, nn.BatchNorm2d) for m in build_model((1, 12, 12), 3, v).modules()),
        "small": lambda v: sum(t.numel() for t in build_model((1, 12, 12), 3, v).parameters())
        < sum(t.numel() for t in build_model((1, 12, 12), 3, base).parameters()),
    }
    assert set(p.variants) == set(claims), "a variant in params.yaml has no claim checked here"
    for name, claim in claims.items():
        assert claim(p.for_variant(name)), name
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    result = run_crossval(Preloaded(x, tiny_set.labels), 3, p)
    assert list(result.summary["variants"]) == list(p.variants)


def test_the_kept_fold_models_are_the_chosen_variants_when_that_is_not_the_baseline(tiny_set, tiny_stats, tiny_params):
    """A baseline that cannot learn (lr 1e-7) and a variant that can: crossval chooses the variant, and
    the fold models it keeps are that variant's (each reproduces its fold's row), not the baseline's."""
    from foldwise.training.crossval import keep_fold_models
    from foldwise.training.engine import evaluate

    p = dataclasses.replace(tiny_params, lr=1e-7, epochs=3, variants={"baseline": {}, "fast": {"lr": 0.02}},
                            compare=("baseline", "fast"))
    data = Preloaded(to_inputs(tiny_set.images, tiny_stats, torch.device("cpu")), tiny_set.labels)
    result = run_crossval(data, 3, p)
    assert result.summary["chosen"] == "fast"
    assert list(result.weights) == [("fast", 0), ("fast", 1)]
    folds = make_folds(tiny_set.labels.numpy(), 2, p.seed)
    rows = result.runs.set_index(["variant", "fold"])
    for (variant, fold), weights in result.weights.items():
        model = build_model((1, 12, 12), 3, p.for_variant(variant))
        model.load_state_dict(weights)
        accuracy = evaluate(model, data.subset(folds[fold][1])).accuracy
        assert accuracy == pytest.approx(rows.loc[("fast", fold), "final_valid_acc"])
        assert accuracy != pytest.approx(rows.loc[("baseline", fold), "final_valid_acc"])
    # the rule alone: one tensor per run, told apart by value
    weights = {(v, f): {"w": torch.tensor([float(i)])} for i, (v, f) in
               enumerate((v, f) for v in ("baseline", "l2", "dropout") for f in range(2))}
    three = dataclasses.replace(tiny_params, compare=("baseline", "l2", "dropout"))
    kept, note = keep_fold_models(three, "l2", weights)
    assert {key: w["w"].item() for key, w in kept.items()} == {("l2", 0): 2.0, ("l2", 1): 3.0}
    assert note == "fold_models: chosen (crossval keeps the fold models of crossval's chosen variant, l2)"


def test_a_run_returns_its_weights_unless_no_fold_models_are_kept(tiny_set, tiny_stats, tiny_params):
    from foldwise.training.crossval import RunSpec, train_run

    data = Preloaded(to_inputs(tiny_set.images, tiny_stats, torch.device("cpu")), tiny_set.labels)
    fold = make_folds(tiny_set.labels.numpy(), 2, tiny_params.seed)[0]
    spec = RunSpec(0, "baseline", 0)
    kept = train_run(data, 3, tiny_params, spec, fold)[2]
    assert isinstance(kept, dict) and all(t.device.type == "cpu" for t in kept.values())
    assert set(kept) == set(build_model((1, 12, 12), 3, tiny_params).state_dict())
    assert train_run(data, 3, dataclasses.replace(tiny_params, fold_models="none"), spec, fold)[2] is None


class LastFirst:
    """A ``crossval.Fanout`` in this process that returns the runs last first, as a cluster may finish
    them: crossval's side of the interface, without Ray (tests/training/test_fanout.py runs Ray's)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, data, num_classes, p, folds, pending, resume, live=None, steps=False, checkpoints=None):
        from foldwise.training.crossval import train_run

        self.calls.append((data, num_classes, p, folds, list(pending), dict(resume)))
        for spec in reversed(pending):
            yield spec, *train_run(data, num_classes, p, spec, folds[spec.fold], saved=resume.get(spec.index))


def test_a_fan_out_finishing_last_first_gives_the_tables_and_the_monitors_order_of_one_process(
        tiny_set, tiny_stats, tiny_params):
    """crossval hands a fan-out everything a run needs (the data, classes, params, folds, the runs
    pending and what to resume them from), and reports runs to the monitor in run order whatever order
    they finish in: each run's epochs, then its fold, as one process does."""
    p = dataclasses.replace(tiny_params, compare=("baseline", "l2"))
    data = Preloaded(to_inputs(tiny_set.images, tiny_stats, torch.device("cpu")), tiny_set.labels)
    here, there = Recorder(), Recorder()
    one = run_crossval(data, 3, p, monitor=here)
    fanout = LastFirst()
    fanned = run_crossval(data, 3, p, monitor=there, fanout=fanout)
    [(got, classes, params, folds, pending, resume)] = fanout.calls
    assert got is data and classes == 3 and params == p and resume == {}
    assert [(s.index, s.variant, s.fold) for s in pending] == [(0, "baseline", 0), (1, "baseline", 1), (2, "l2", 0),
                                                              (3, "l2", 1)]
    assert all(np.array_equal(a, b) for f, g in zip(folds, make_folds(tiny_set.labels.numpy(), 2, p.seed))
               for a, b in zip(f, g))
    pd.testing.assert_frame_equal(fanned.runs, one.runs, check_exact=True)
    pd.testing.assert_frame_equal(fanned.history.drop(columns="seconds"), one.history.drop(columns="seconds"),
                                  check_exact=True)
    assert there.kinds == here.kinds == (["epoch"] * p.epochs + ["fold"]) * 4
    assert [(r["variant"], r["fold"], r["epoch"]) for r in there.rows] == [
        (r["variant"], r["fold"], r["epoch"]) for r in here.rows]
    assert [(r["variant"], r["fold"]) for r in there.folds] == [(r["variant"], r["fold"]) for r in here.folds]


class SideBySide:
    """A ``crossval.Fanout`` that trains two runs at once, as two processes do: their epochs end
    alternately, the later run's first, and the later run finishes first. ``seen`` is how many rows the
    monitor held right after each epoch was passed on."""

    def __init__(self, monitor) -> None:
        self.monitor, self.seen = monitor, []

    def run(self, data, num_classes, p, folds, pending, resume, live=None, steps=False, checkpoints=None):
        from foldwise.training.crossval import train_run

        for first, second in zip(pending[::2], pending[1::2]):
            a, b = (train_run(data, num_classes, p, spec, folds[spec.fold]) for spec in (first, second))
            for row_a, row_b in zip(a[1], b[1]):
                for spec, row in ((second, row_b), (first, row_a)):
                    live(spec, "epoch", row)
                    self.seen.append((spec.index, row["epoch"], len(self.monitor.rows)))
            yield second, *b
            yield first, *a


def test_epochs_of_runs_side_by_side_reach_the_monitor_live_in_the_order_of_one_process(
        tiny_set, tiny_stats, tiny_params):
    """The first unreported run's epochs are passed on as they end; a later run's wait for its turn, then
    come at once, then live; no epoch twice."""
    p = dataclasses.replace(tiny_params, compare=("baseline", "l2"), epochs=3)
    data = Preloaded(to_inputs(tiny_set.images, tiny_stats, torch.device("cpu")), tiny_set.labels)
    here, there = Recorder(), Recorder()
    run_crossval(data, 3, p, monitor=here)
    fanout = SideBySide(there)
    run_crossval(data, 3, p, monitor=there, fanout=fanout)
    assert there.kinds == here.kinds == (["epoch"] * 3 + ["fold"]) * 4
    assert [(r["variant"], r["fold"], r["epoch"]) for r in there.rows] == [
        (r["variant"], r["fold"], r["epoch"]) for r in here.rows]
    # run 1's epochs wait while run 0 goes; run 0's arrive live; run 2's come live once run 1 is reported
    assert fanout.seen == [(1, 1, 0), (0, 1, 1), (1, 2, 1), (0, 2, 2), (1, 3, 2), (0, 3, 3),
                           (3, 1, 6), (2, 1, 7), (3, 2, 7), (2, 2, 8), (3, 3, 8), (2, 3, 9)]

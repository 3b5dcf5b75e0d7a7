import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scipy import stats

from foldwise.checkpoints import Checkpoints
from foldwise.crossval import make_folds, run_crossval
from foldwise.cvstats import cv_table, explain_choice, paired_test, summarize
from foldwise.engine import to_inputs
from foldwise.monitor import Monitor


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


def test_too_few_images_per_class_is_explained():
    with pytest.raises(ValueError, match=r"k_folds: 5 is larger than the smallest class \(label 0: 2 training "
                                         r"images\); valid: 2 to 2"):
        make_folds(np.array([0, 0, 1, 1, 1, 1, 1, 1]), 5, seed=0)


def folds_table(scores: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"variant": v, "fold": f, "final_valid_acc": s, "final_valid_loss": 1 - s, "best_valid_acc": s, "epochs": 3}
        for v, values in scores.items() for f, s in enumerate(values)
    ])


def test_summary_mean_std_ci_and_choice():
    summary = summarize(folds_table({"baseline": [0.80, 0.82, 0.81], "l2": [0.85, 0.87, 0.83],
                                     "dropout": [0.70, 0.72, 0.71]}))
    assert summary["chosen"] == "l2" and summary["reference"] == "baseline"
    l2 = summary["variants"]["l2"]
    assert l2["valid_acc_mean"] == pytest.approx(0.85)
    assert l2["valid_acc_std"] == pytest.approx(0.02, abs=1e-6)
    half = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)  # 95% t interval over 3 folds
    assert (l2["valid_acc_ci_low"], l2["valid_acc_ci_high"]) == pytest.approx((0.85 - half, 0.85 + half), abs=1e-6)
    assert l2["diff_vs_baseline"] == pytest.approx(0.04) and "p_value" not in summary["variants"]["baseline"]
    assert list(summary["variants"]) == ["baseline", "l2", "dropout"]
    reason = explain_choice(summary)
    assert reason.startswith("l2: highest mean validation accuracy over 3 folds, 0.8500 ± 0.0200")
    assert "+0.0400 vs baseline, p = " in reason and "next: baseline (0.8100)" in reason
    table = cv_table({"k_folds": 3, **summary})
    assert "| l2 **(chosen)** | 0.8500 ± 0.0200 |" in table and f"Chosen: {reason}." in table


def test_paired_test_is_the_corrected_resampled_t_test():
    diffs = np.array([0.01, 0.02, 0.015, 0.005, 0.012])
    corrected, plain = paired_test(diffs, k=5)
    assert plain == pytest.approx(stats.ttest_rel(diffs + 0.5, np.full(5, 0.5)).pvalue, rel=1e-6)
    t = diffs.mean() / np.sqrt((1 / 5 + 1 / 4) * diffs.var(ddof=1))  # Nadeau & Bengio's variance correction
    assert corrected == pytest.approx(2 * stats.t.sf(t, 4), rel=1e-6)
    assert corrected > plain  # overlapping training sets: the honest p-value is larger
    assert paired_test(np.zeros(5), 5) == (1.0, 1.0)


def test_ties_go_to_the_first_variant_in_params_order():
    assert summarize(folds_table({"baseline": [0.8, 0.8], "l2": [0.8, 0.8]}))["chosen"] == "baseline"


def test_run_crossval_covers_every_variant_and_fold_on_the_same_folds(tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    result = run_crossval((x, tiny_set.labels), 3, tiny_params)
    p = tiny_params
    assert list(result.folds.columns) == [
        "variant", "fold", "final_valid_acc", "final_valid_loss", "best_valid_acc", "best_valid_loss",
        "best_epoch", "epochs", "stopped_early"]  # no wall-clock seconds: folds.csv is committed
    assert len(result.folds) == len(p.variants) * p.k_folds
    assert len(result.history) == len(p.variants) * p.k_folds * p.epochs
    assert set(result.summary["variants"]) == set(p.variants)
    assert result.summary["chosen"] in p.variants and result.summary["k_folds"] == 2
    # same initial weights and folds: a variant identical to baseline gives identical scores
    twin = dataclasses.replace(p, variants={"baseline": {}, "twin": {}})
    again = run_crossval((x, tiny_set.labels), 3, twin)
    by_variant = again.folds.set_index(["variant", "fold"])["final_valid_acc"]
    assert list(by_variant["baseline"]) == list(by_variant["twin"])
    assert list(by_variant["baseline"]) == list(result.folds.set_index(["variant", "fold"]).loc["baseline"]["final_valid_acc"])


def test_only_compared_variants_run_and_combinations_merge(tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, epochs=1, compare=("baseline", "l2+dropout"))
    result = run_crossval((x, tiny_set.labels), 3, p)
    assert list(dict.fromkeys(result.folds["variant"])) == ["baseline", "l2+dropout"]
    assert "p_value" in result.summary["variants"]["l2+dropout"]


def test_bad_variant_fails_before_any_training(tiny_set, tiny_stats, tiny_params, capsys):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    p = dataclasses.replace(tiny_params, variants={**tiny_params.variants, "big": {"model": "vgg99"}})
    with pytest.raises(KeyError, match="unknown model 'vgg99'"):
        run_crossval((x, tiny_set.labels), 3, p, monitor=None)
    p = dataclasses.replace(tiny_params, variants={**tiny_params.variants, "aug": {"augment": True,
                                                                                   "augment_padding": 12}})
    with pytest.raises(ValueError, match="augment_padding: 12 is too large for 12x12 images; valid: 0 to 11"):
        run_crossval((x, tiny_set.labels), 3, p)


class Interrupted(Exception):
    pass


class Killed(Checkpoints):
    """Real checkpoints that stop the run after ``n`` saves, as a kill between epochs would."""

    def __init__(self, *args, n: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.n = n

    def save(self, name, state):
        super().save(name, state)
        self.n -= 1
        if self.n == 0:
            raise Interrupted


def test_interrupted_crossval_resumes_to_the_same_result(tmp_path, tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    # dropout and augmentation draw random numbers: resuming must restore every generator
    p = dataclasses.replace(tiny_params, epochs=3, variants={"baseline": {}, "dropout": {"dropout": 0.3},
                                                             "augment": {"augment": True}})
    whole = run_crossval((x, tiny_set.labels), 3, p)
    with pytest.raises(Interrupted):  # in the middle of dropout's first fold (runs have 3 epochs + done)
        run_crossval((x, tiny_set.labels), 3, p, checkpoints=Killed("crossval", "k1", tmp_path, n=10))
    seen = Recorder()
    resumed = run_crossval((x, tiny_set.labels), 3, p, seen, checkpoints=Checkpoints("crossval", "k1", tmp_path))
    pd.testing.assert_frame_equal(resumed.folds, whole.folds)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), whole.history.drop(columns="seconds"))
    assert resumed.summary == whole.summary
    # monitors that keep files (dvclive) get every row once: the replayed ones first, then the new ones
    assert seen.kinds[:1] == ["resume"] and "epoch" in seen.kinds
    assert [(r["variant"], r["fold"], r["epoch"]) for r in seen.rows] == \
        [(r.variant, r.fold, r.epoch) for r in whole.history.itertuples()]
    Checkpoints("crossval", "k1", tmp_path).clear()
    assert not (tmp_path / "crossval").exists()


class Recorder(Monitor):
    def __init__(self):
        self.kinds, self.rows = [], []

    def _resume(self, rows):
        self.kinds.append("resume")
        self.rows.extend(rows)

    def _epoch_end(self, row):
        self.kinds.append("epoch")
        self.rows.append(row)


def test_checkpoints_of_other_experiments_are_never_resumed_nor_touched(tmp_path):
    """Two queued experiments run side by side: neither may delete the other's resume state."""
    Checkpoints("crossval", "lr-a", tmp_path).save("run000", {"done": True})
    other = Checkpoints("crossval", "lr-b", tmp_path)
    assert other.load("run000") is None
    other.save("run000", {"done": False})
    other.clear()  # lr-b finished: only its own key goes
    assert Checkpoints("crossval", "lr-a", tmp_path).load("run000") == {"done": True}
    assert not (tmp_path / "crossval" / "lr-b").exists()


def test_checkpoints_nobody_wrote_for_a_week_are_pruned(tmp_path):
    import os
    import time

    Checkpoints("crossval", "killed", tmp_path).save("run000", {"done": False})
    Checkpoints("crossval", "running", tmp_path).save("run000", {"done": False})
    old = time.time() - 8 * 86400
    for path in (tmp_path / "crossval" / "killed", tmp_path / "crossval" / "killed" / "run000.pt"):
        os.utime(path, (old, old))
    Checkpoints("crossval", "new", tmp_path)
    assert sorted(p.name for p in (tmp_path / "crossval").iterdir()) == ["running"]


def test_checkpoints_live_in_the_dvc_project_that_queued_the_run(tmp_path, monkeypatch):
    """DVC points DVC_ROOT at the parent repository in queued runs (temporary copies): a re-queued
    experiment finds its checkpoints there."""
    from foldwise.checkpoints import CHECKPOINT_ENV, default_root

    assert default_root({"DVC_ROOT": str(tmp_path)}) == tmp_path / ".foldwise" / "checkpoints"
    assert default_root({"DVC_ROOT": str(tmp_path), CHECKPOINT_ENV: "/elsewhere"}) == Path("/elsewhere")
    assert default_root({}) == Path(".foldwise") / "checkpoints"


def test_every_variant_in_params_yaml_runs_and_changes_what_it_claims(tiny_set, tiny_stats):
    from pathlib import Path

    from torch import nn

    from foldwise.optim import make_optimizer
    from foldwise.models import build_model
    from foldwise.params import load_params

    p = dataclasses.replace(load_params(Path(__file__).resolve().parents[1] / "params.yaml"),
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
    result = run_crossval((x, tiny_set.labels), 3, p)
    assert list(result.summary["variants"]) == list(p.variants)

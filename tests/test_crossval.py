import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from foldwise.crossval import explain_choice, make_folds, run_crossval, summarize
from foldwise.engine import to_inputs


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
    with pytest.raises(ValueError, match="k_folds=5 needs at least 5 training images per class; .* has 2"):
        make_folds(np.array([0, 0, 1, 1, 1, 1, 1, 1]), 5, seed=0)


def folds_table(scores: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"variant": v, "fold": f, "final_valid_acc": s, "final_valid_loss": 1 - s, "best_valid_acc": s}
        for v, values in scores.items() for f, s in enumerate(values)
    ])


def test_summary_mean_std_and_choice():
    summary = summarize(folds_table({"baseline": [0.80, 0.82], "l2": [0.85, 0.87], "dropout": [0.70, 0.72]}))
    assert summary["chosen"] == "l2"
    assert summary["variants"]["l2"]["valid_acc_mean"] == pytest.approx(0.86)
    assert summary["variants"]["l2"]["valid_acc_std"] == pytest.approx(np.std([0.85, 0.87], ddof=1), abs=1e-6)
    assert list(summary["variants"]) == ["baseline", "l2", "dropout"]
    reason = explain_choice(summary)
    assert reason.startswith("l2: highest mean") and "0.8600" in reason and "next: baseline (0.8100)" in reason


def test_ties_go_to_the_first_variant_in_params_order():
    assert summarize(folds_table({"baseline": [0.8, 0.8], "l2": [0.8, 0.8]}))["chosen"] == "baseline"


def test_run_crossval_covers_every_variant_and_fold_on_the_same_folds(tiny_set, tiny_stats, tiny_params):
    x = to_inputs(tiny_set.images, tiny_stats, torch.device("cpu"))
    result = run_crossval((x, tiny_set.labels), 3, tiny_params)
    p = tiny_params
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

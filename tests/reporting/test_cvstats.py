"""Cross-validation statistics: mean, std, intervals, the paired test and the choice, by value."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from foldwise.reporting.cvstats import cv_table, explain_choice, headline, paired_test, summarize


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


def test_one_or_two_folds_and_no_spread():
    """One fold: no spread, no interval; two folds: a real interval and a real p-value."""
    one = summarize(folds_table({"baseline": [0.8], "l2": [0.9]}))
    assert one["variants"]["l2"] == {
        "valid_acc_mean": 0.9, "valid_acc_std": 0.0, "valid_acc_ci_low": 0.9, "valid_acc_ci_high": 0.9,
        "valid_loss_mean": pytest.approx(0.1), "best_valid_acc_mean": 0.9, "epochs_mean": 3.0,
        "diff_vs_baseline": pytest.approx(0.1), "p_value": 0.0, "p_value_uncorrected": 0.0, "folds": 1}
    two = summarize(folds_table({"baseline": [0.80, 0.84], "l2": [0.82, 0.90]}))["variants"]["l2"]
    std = np.std([0.82, 0.90], ddof=1)
    assert two["valid_acc_std"] == pytest.approx(std, abs=1e-6)
    half = stats.t.ppf(0.975, 1) * std / np.sqrt(2)
    assert two["valid_acc_ci_low"] == pytest.approx(0.86 - half, abs=1e-6)
    corrected, plain = paired_test(np.array([0.02, 0.06]), 2)
    assert 0 < plain < corrected < 1 and two["p_value"] == pytest.approx(corrected, abs=1e-6)
    assert two["p_value_uncorrected"] == pytest.approx(plain, abs=1e-6)
    assert paired_test(np.array([0.01]), 5) == (0.0, 0.0)
    assert paired_test(np.array([0.0]), 5) == (1.0, 1.0)
    assert paired_test(np.array([0.02, 0.02, 0.02]), 3) == (0.0, 0.0)  # always better: no doubt left


def test_summary_values_are_rounded_to_six_places():
    v = summarize(folds_table({"baseline": [0.1234567, 0.1234567]}))["variants"]["baseline"]
    assert v["valid_acc_mean"] == 0.123457 and v["valid_loss_mean"] == 0.876543


def test_without_baseline_the_first_variant_is_the_reference():
    summary = summarize(folds_table({"l2": [0.80, 0.82], "dropout": [0.90, 0.91], "baseline_x": [0.5, 0.5]}))
    assert summary["reference"] == "l2" and "p_value" not in summary["variants"]["l2"]
    assert summary["variants"]["dropout"]["diff_vs_l2"] == pytest.approx(0.095)
    assert summarize(folds_table({"l2": [0.8], "baseline": [0.7]}))["reference"] == "baseline"


def test_headline_keeps_the_choice_and_mean_std_p_per_variant():
    summary = summarize(folds_table({"baseline": [0.80, 0.82], "l2": [0.85, 0.87]}))
    b, l2 = summary["variants"]["baseline"], summary["variants"]["l2"]
    assert headline(summary) == {"chosen": "l2", "variants": {
        "baseline": {"valid_acc_mean": b["valid_acc_mean"], "valid_acc_std": b["valid_acc_std"]},
        "l2": {"valid_acc_mean": l2["valid_acc_mean"], "valid_acc_std": l2["valid_acc_std"],
               "p_value": l2["p_value"]}}}


def summary_with(p_value: float) -> dict:
    return {"k_folds": 3, "reference": "baseline", "chosen": "l2", "variants": {
        "baseline": {"valid_acc_mean": 0.8, "valid_acc_std": 0.01, "valid_acc_ci_low": 0.78,
                     "valid_acc_ci_high": 0.82, "epochs_mean": 3.0, "folds": 3},
        "l2": {"valid_acc_mean": 0.85, "valid_acc_std": 0.02, "valid_acc_ci_low": 0.8,
               "valid_acc_ci_high": 0.9, "epochs_mean": 2.5, "folds": 3, "diff_vs_baseline": 0.05,
               "p_value": p_value},
        "a_dropout": {"valid_acc_mean": 0.7, "valid_acc_std": 0.0, "valid_acc_ci_low": 0.7,
                      "valid_acc_ci_high": 0.7, "epochs_mean": 3.0, "folds": 3, "diff_vs_baseline": -0.1,
                      "p_value": 0.5}}}


def test_the_reason_says_whether_the_difference_is_significant():
    assert explain_choice(summary_with(0.01)) == (
        "l2: highest mean validation accuracy over 3 folds, 0.8500 ± 0.0200 (95% CI 0.8000 to 0.9000); "
        "+0.0500 vs baseline, p = 0.010 (corrected paired t-test, significant at 0.05); next: baseline (0.8000)")
    assert "p = 0.050 (corrected paired t-test, not significant at 0.05)" in explain_choice(summary_with(0.05))


def test_cv_table_as_written_to_summary_md():
    assert cv_table(summary_with(0.01)) == "\n".join([
        "Cross-validation: 3 folds, the same for every variant. Accuracy: on the held-out fold, after the last "
        "epoch (best epoch when early stopping).",
        "",
        "| variant | accuracy (mean ± std) | 95% CI | vs baseline | p-value | epochs |",
        "|---|---|---|---|---|---|",
        "| baseline | 0.8000 ± 0.0100 | 0.7800 to 0.8200 | - | - | 3 |",
        "| l2 **(chosen)** | 0.8500 ± 0.0200 | 0.8000 to 0.9000 | +0.0500 | 0.010 | 2.5 |",
        "| a_dropout | 0.7000 ± 0.0000 | 0.7000 to 0.7000 | -0.1000 | 0.500 | 3 |",
        "",
        "p-value: corrected resampled paired t-test (Nadeau & Bengio) over the folds, against baseline.",
        "",
        f"Chosen: {explain_choice(summary_with(0.01))}.",
        ""])


def test_the_interval_stays_within_0_and_1():
    """Two folds of a small set far apart: Student's t (12.7 for one degree of freedom) reaches
    -0.21 to 1.21; an accuracy cannot, so the interval is cut to [0, 1] (and only there)."""
    summary = summarize(folds_table({"baseline": [0.5, 0.51], "wild": [0.2, 0.8], "perfect": [1.0, 0.98]}))
    wild, perfect = summary["variants"]["wild"], summary["variants"]["perfect"]
    assert (wild["valid_acc_ci_low"], wild["valid_acc_ci_high"]) == (0.0, 1.0)
    assert perfect["valid_acc_ci_high"] == 1.0 and perfect["valid_acc_ci_low"] == pytest.approx(
        0.99 - stats.t.ppf(0.975, 1) * np.std([1.0, 0.98], ddof=1) / np.sqrt(2), abs=1e-6)
    base = summary["variants"]["baseline"]
    assert 0.44 < base["valid_acc_ci_low"] < 0.5 and 0.51 < base["valid_acc_ci_high"] < 0.57  # untouched

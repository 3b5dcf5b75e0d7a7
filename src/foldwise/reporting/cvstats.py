"""Cross-validation statistics: per-variant mean, std and 95% CI over folds, a paired test
against the reference variant, the choice and its reason, and the Markdown table.

Kept apart from ``crossval`` (which trains) so that the stages that only
read a CV summary (report, train's explanation) do not import torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from foldwise.reporting.significance import ALPHA

# The fold score: valid accuracy of the weights a run ends with (the last
# epoch's, or the best epoch's when early stopping restores them). The best
# accuracy over epochs is reported too, but it is chosen on the same fold it
# is measured on, so it is optimistic and not used for the choice.
SCORE = "final_valid_acc"
REFERENCE = "baseline"  # the variant the others are compared with, when it is compared
HEADLINE = ("valid_acc_mean", "valid_acc_std", "p_value")  # per variant, in cv.json (what `dvc exp show` shows)


def _t_distribution() -> Any:
    """Student's t from scipy.stats, imported on first use: it takes 0.5 s, which every stage
    that imports this module would pay."""
    from scipy import stats

    return stats.t


def paired_test(diffs: np.ndarray, k: int) -> tuple[float, float]:
    """Two-sided p-values of a mean fold difference of 0: (corrected, plain paired t-test).

    K-fold training sets overlap, so fold scores are correlated and the plain
    paired t-test finds differences that are not there. The corrected
    resampled t-test (Nadeau & Bengio, 2003) inflates the variance by
    1/n + n_valid/n_train = 1/k + 1/(k-1).
    """
    n, mean = len(diffs), float(np.mean(diffs))
    var = float(np.var(diffs, ddof=1)) if n > 1 else 0.0  # one fold has no spread
    if var == 0:  # no t statistic: the mean alone decides
        p = 1.0 if mean == 0 else 0.0
        return p, p

    def p_value(scale: float) -> float:
        return float(2 * _t_distribution().sf(abs(mean) / math.sqrt(scale * var), n - 1))

    return p_value(1 / n + 1 / (k - 1)), p_value(1 / n)


def summarize(folds: pd.DataFrame) -> dict[str, Any]:
    """Per variant: mean, std, 95% CI, and the paired comparison with the reference; the best variant.

    Numbers plus two names, so `dvc metrics diff` stays a readable table;
    ``explain_choice`` and ``cv_table`` turn it into words.
    """
    order = list(dict.fromkeys(folds["variant"]))
    reference = REFERENCE if REFERENCE in order else order[0]
    k = int(folds["fold"].nunique())
    scores = folds.pivot(index="fold", columns="variant", values=SCORE)
    variants: dict[str, dict[str, Any]] = {}
    for name in order:
        rows = folds[folds["variant"] == name]
        acc = rows[SCORE].to_numpy(dtype=float)  # pragma: no mutate (dtype=None: the column is float already)
        n = len(acc)
        std = float(np.std(acc, ddof=1)) if n > 1 else 0.0
        half = float(_t_distribution().ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
        entry = {
            "valid_acc_mean": acc.mean(), "valid_acc_std": std,
            # the t interval over the folds (their spread comes from training as well as from the
            # data), cut to [0, 1]: an accuracy cannot leave it, and removing impossible values
            # never lowers the interval's coverage (a Wilson interval on pooled counts would stay
            # inside, but treats every image as independent and ignores the spread between folds)
            "valid_acc_ci_low": max(0.0, acc.mean() - half), "valid_acc_ci_high": min(1.0, acc.mean() + half),
            "valid_loss_mean": rows["final_valid_loss"].mean(), "best_valid_acc_mean": rows["best_valid_acc"].mean(),
            "epochs_mean": rows["epochs"].mean(),
        }
        if name != reference:
            diffs = (scores[name] - scores[reference]).dropna().to_numpy(dtype=float)  # pragma: no mutate (as acc)
            corrected, plain = paired_test(diffs, k)
            entry.update({f"diff_vs_{reference}": diffs.mean(), "p_value": corrected, "p_value_uncorrected": plain})
        variants[name] = {key: round(float(v), 6) for key, v in entry.items()} | {"folds": n}
    ranked = sorted(order, key=lambda v: -variants[v]["valid_acc_mean"])  # stable: ties go to params order
    return {"reference": reference, "variants": variants, "chosen": ranked[0]}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The metric file's view of ``summary``: the choice, and each variant's mean, std and p-value.

    The rest (intervals, differences, epochs) stays in the full summary, so
    `dvc exp show` keeps a handful of columns per variant.
    """
    return {"chosen": summary["chosen"],
            "variants": {name: {k: v[k] for k in HEADLINE if k in v} for name, v in summary["variants"].items()}}


def explain_choice(summary: dict[str, Any]) -> str:
    """Why ``summary['chosen']`` won: its score and interval, the gap to the reference, the runner-up."""
    variants, best, reference = summary["variants"], summary["chosen"], summary["reference"]
    v = variants[best]
    line = (f"{best}: highest mean validation accuracy over {v['folds']} folds, {v['valid_acc_mean']:.4f} "
            f"± {v['valid_acc_std']:.4f} (95% CI {v['valid_acc_ci_low']:.4f} to {v['valid_acc_ci_high']:.4f})")
    if best != reference:
        p = v["p_value"]
        verdict = "significant" if p < ALPHA else "not significant"
        line += (f"; {v[f'diff_vs_{reference}']:+.4f} vs {reference}, p = {p:.3f} "
                 f"(corrected paired t-test, {verdict} at {ALPHA})")
    others = [name for name in sorted(variants, key=lambda n: -variants[n]["valid_acc_mean"]) if name != best]
    if others:
        line += f"; next: {others[0]} ({variants[others[0]]['valid_acc_mean']:.4f})"
    return line


def cv_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table with the choice and its reason under it (reports/cv/summary.md)."""
    reference = summary["reference"]
    lines = [f"Cross-validation: {summary['k_folds']} folds, the same for every variant. Accuracy: on the "
             f"held-out fold, after the last epoch (best epoch when early stopping).", "",
             f"| variant | accuracy (mean ± std) | 95% CI | vs {reference} | p-value | epochs |",
             "|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        diff = f"{v[f'diff_vs_{reference}']:+.4f}" if name != reference else "-"
        p = f"{v['p_value']:.3f}" if name != reference else "-"
        mark = " **(chosen)**" if name == summary["chosen"] else ""
        lines.append(f"| {name}{mark} | {v['valid_acc_mean']:.4f} ± {v['valid_acc_std']:.4f} | "
                     f"{v['valid_acc_ci_low']:.4f} to {v['valid_acc_ci_high']:.4f} | {diff} | {p} | "
                     f"{v['epochs_mean']:g} |")
    lines += ["", f"p-value: corrected resampled paired t-test (Nadeau & Bengio) over the folds, against "
              f"{reference}.", "", f"Chosen: {explain_choice(summary)}.", ""]
    return "\n".join(lines)

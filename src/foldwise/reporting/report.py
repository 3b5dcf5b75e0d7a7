"""reports/report.md: one page on a run, short enough to paste as a pull-request comment.

Built only from the pipeline's own outputs and params.yaml, so it is exactly
as reproducible as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from foldwise.core.params import Params
from foldwise.reporting.cvstats import cv_table

FIGURES = (  # file in reports/figures, caption
    ("learning_curves.png", "Learning curves: mean over folds per variant (band: +-1 std), and the final model"),
    ("cv_comparison.png", "Cross-validation accuracy of every fold, per variant"),
    ("confusion_matrix.png", "Test confusion matrix"),
    ("misclassified.png", "The most confidently misclassified test images"),
    ("sample_predictions.png", "Test images picked at random, with their predictions"),
    ("reliability.png",
     "Reliability of the model's probabilities on the test set, before and after temperature scaling"),
)
MODEL_NAMES = {"single": "single final model", "ensemble": "fold ensemble (mean softmax of the K fold models)"}
NOT_COMPARED = ("variants", "compare")  # shown in the cross-validation section instead


def non_defaults(p: Params) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every param that differs from foldwise's default."""
    default = Params()
    return [(f.name, getattr(p, f.name), getattr(default, f.name)) for f in dataclasses.fields(Params)
            if f.name not in NOT_COMPARED and getattr(p, f.name) != getattr(default, f.name)]


def _value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(map(str, v)) + "]"
    return f"`{v!r}`" if isinstance(v, str) else f"`{v}`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def confused_pairs(confusion: pd.DataFrame, count: int = 3) -> list[str]:
    """The ``count`` most frequent mistakes, as "Shirt taken for T-shirt/top: 121 (12.1% of Shirt)"."""
    support = confusion.groupby("actual")["count"].sum()
    wrong = confusion[(confusion["actual"] != confusion["predicted"]) & (confusion["count"] > 0)]
    wrong = wrong.sort_values("count", ascending=False, kind="stable").head(count)
    return [f"{r.actual} taken for {r.predicted}: {r.count} ({r.count / support[r.actual]:.1%} of {r.actual})"
            for r in wrong.itertuples()]


def model_name(name: str) -> str:
    """A comparison row's name in words: "ensemble+tta" -> "fold ensemble (...) + test-time flips"."""
    name, _, temperature = name.partition(", T=")
    base, _, tta = name.partition("+")
    words = MODEL_NAMES.get(base, base) + (" + test-time flips" if tta else "")
    return f"{words}, temperature-scaled (T = {temperature})" if temperature else words


def model_section(comparison: dict[str, Any], test_images: int) -> list[str]:
    """Single model vs fold ensemble (vs test-time flips), McNemar's test, the choice and calibration."""
    rows = comparison["rows"]
    lines = ["## Single model, fold ensemble, calibration", ""]
    lines += _table(["model (test set)", "accuracy", "macro F1", "NLL", "ECE"], [
        [model_name(r["name"]), f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['nll']:.4f}", f"{r['ece']:.4f}"]
        for r in rows])
    paired = comparison.get("mcnemar")
    if paired:
        lines += ["", f"McNemar's exact test on the same {test_images:,} test images: {paired['only_first']} are "
                      f"right only for the single model, {paired['only_second']} only for the ensemble; "
                      f"two-sided p = {paired['p_value']:.3g}."]
    used, calibrated = next(r for r in rows if r["name"] == comparison["used"]), rows[-1]
    lines += ["", f"Used for the predictions, figures and per-class table: {comparison['why']}. Its probabilities "
                  f"are temperature-scaled (T = {comparison['temperature']:.3f}, fitted on the valid split): test ECE "
                  f"{used['ece']:.4f} -> {calibrated['ece']:.4f}, NLL {used['nll']:.4f} -> {calibrated['nll']:.4f}; "
                  f"the galleries and predictions.csv show the calibrated probabilities. NLL in nats per image; "
                  f"ECE over 15 equal-width confidence bins."]
    lines += [f"Note: {note}." for note in comparison.get("notes", [])]
    return lines


def build(p: Params, prepared: dict[str, Any], cv: dict[str, Any], folds: pd.DataFrame,
          train: dict[str, Any], comparison: dict[str, Any], per_class: pd.DataFrame, prov: dict[str, Any],
          confusion: pd.DataFrame) -> str:
    """The report's Markdown. Inputs: params.yaml, prepare's report.json, crossval's full summary
    and folds.csv, train's train.json, evaluate's comparison.json, per_class.csv, provenance.json and
    confusion.csv. No wall-clock times: the report is a pure function of data, params and code
    (dvc.lock records its hash); the stages print their times."""
    test = next(r for r in comparison["rows"] if r["name"] == comparison["used"])
    used = model_name(comparison["used"])
    images = prepared["images"]
    shape = "x".join(map(str, prepared["shape"]))
    variant = prov["variant"]
    how = ("chosen by cross-validation" if p.variant == "auto"
           else f"pinned in params.yaml (`variant: {variant}`)")
    lines = [f"# Run report: {prov['dataset']}, {prov['model']}, variant {variant}", ""]
    lines += _table(["", ""], [
        ["dataset", f"{prov['dataset']}: {images.get('train', 0):,} train / {images.get('valid', 0):,} valid / "
                    f"{images.get('test', 0):,} test images, {prepared['classes']} classes, {shape} (C x H x W)"],
        ["model", f"{prov['model']}, variant **{variant}** ({how})"],
        ["device", f"{prov['device']} (torch {prov['torch']}, torchvision {prov['torchvision']}, "
                   f"Python {prov['python']})"],
        ["test accuracy", f"**{test['accuracy']:.4f}** (macro F1 {test['macro_f1']:.4f}, loss {test['nll']:.4f}, "
                          f"{prov['test_images']:,} images; {used})"],
    ])
    changed = non_defaults(p)
    lines += ["", "## Parameters that differ from the defaults", ""]
    lines += (_table(["key", "value", "default"], [[k, _value(v), _value(d)] for k, v, d in changed]) if changed
              else ["None: every parameter has foldwise's default value."])
    runs = folds.groupby(["variant", "fold"]).ngroups
    lines += ["", f"Work done: crossval {runs} trainings ({cv['k_folds']} folds x {folds['variant'].nunique()} "
              f"variants, {folds['epochs'].sum():g} epochs in all), train {train['epochs_run']} epochs of {variant}, "
              f"evaluate {prov['test_images']:,} test images. Each stage prints its time.", ""]
    lines += ["## Cross-validation", "", cv_table(cv).rstrip(), ""]
    lines += ["## Final model", "",
              f"{variant}, trained on the train split for {train['epochs_run']} epochs; the weights of epoch "
              f"{train['best_epoch']} are kept (validation accuracy {train['valid_acc']:.4f}, "
              f"loss {train['valid_loss']:.4f}).", ""]
    lines += [*model_section(comparison, prov["test_images"]), ""]
    per_class = {row["class"]: row for row in per_class.to_dict("records")}
    worst = min(per_class, key=lambda c: per_class[c]["f1"])
    lines += ["## Test set", "", f"The {used}: accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}. "
              f"Weakest class: **{worst}** (F1 {per_class[worst]['f1']:.4f}).", ""]
    lines += _table(["class", "precision", "recall", "F1", "images"], [
        [f"**{c}**" if c == worst else c, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}",
         f"{int(s['support']):,}"] for c, s in per_class.items()])
    pairs = confused_pairs(confusion)
    if pairs:
        lines += ["", "Most frequent confusions: " + "; ".join(pairs) + "."]
    lines += ["", "## Figures", ""]
    for name, caption in FIGURES:
        lines += [f"**{caption}**", "", f"![{caption}](figures/{name})", ""]
    return "\n".join(lines)


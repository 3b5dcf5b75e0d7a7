import dataclasses

import numpy as np
import pandas as pd

from foldwise.core.params import Params
from foldwise.reporting.cvstats import summarize
from foldwise.reporting.plot_data import confusion_counts
from foldwise.reporting.report import FIGURES, build, confused_pairs, non_defaults

CLASSES = ["T-shirt/top", "Trouser", "Shirt"]


def inputs():
    rng = np.random.default_rng(0)
    folds = pd.DataFrame([{"variant": v, "fold": f, "final_valid_acc": 0.80 + 0.02 * i + rng.normal(0, 0.003),
                           "final_valid_loss": 0.5, "best_valid_acc": 0.8, "epochs": 3}
                          for i, v in enumerate(["baseline", "l2"]) for f in range(3)])
    cv = {"k_folds": 3, **summarize(folds)}
    actual = ["T-shirt/top"] * 10 + ["Trouser"] * 10 + ["Shirt"] * 10
    predicted = ["T-shirt/top"] * 8 + ["Shirt"] * 2 + ["Trouser"] * 10 + ["T-shirt/top"] * 4 + ["Shirt"] * 6
    per_class = pd.DataFrame([
        {"class": "T-shirt/top", "precision": 0.667, "recall": 0.8, "f1": 0.727, "support": 10},
        {"class": "Trouser", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10},
        {"class": "Shirt", "precision": 0.75, "recall": 0.6, "f1": 0.667, "support": 10}])
    comparison = {"used": "single", "why": "the single model (ensemble: auto): the ensemble is not significantly "
                  "more accurate (+0.50 points, McNemar p = 0.31; threshold 0.05)", "notes": [], "temperature": 1.25,
                  "mcnemar": {"only_first": 3, "only_second": 6, "p_value": 0.507812},
                  "rows": [{"name": "single", "accuracy": 0.8, "macro_f1": 0.798, "nll": 0.41, "ece": 0.061},
                           {"name": "ensemble", "accuracy": 0.9, "macro_f1": 0.899, "nll": 0.35, "ece": 0.05},
                           {"name": "single, T=1.250", "accuracy": 0.8, "macro_f1": 0.798, "nll": 0.39, "ece": 0.012}]}
    provenance = {"dataset": "fashion-mnist", "model": "lenet", "variant": "l2", "seed": 42,
                  "device": "cpu", "torch": "2.x", "torchvision": "0.x", "python": "3.11", "test_images": 30}
    train = {"best_epoch": 3, "epochs_run": 3, "valid_acc": 0.84, "valid_loss": 0.45}
    prepared = {"images": {"train": 100, "valid": 20, "test": 30}, "classes": 3, "shape": [1, 28, 28]}
    return (prepared, cv, folds, train, comparison, per_class, provenance,
            confusion_counts(pd.Series(actual), pd.Series(predicted), CLASSES))


def test_report_has_every_section_with_the_runs_numbers():
    p = dataclasses.replace(Params(), lr=0.01, epochs=3, hidden_sizes=(64, 32))
    text = build(p, *inputs())
    assert text.startswith("# Run report: fashion-mnist, lenet, variant l2\n")
    assert "100 train / 20 valid / 30 test images, 3 classes, 1x28x28" in text
    assert "variant **l2** (chosen by cross-validation)" in text
    assert "| lr | `0.01` | `0.008` |" in text and "| epochs | `3` | `5` |" in text
    assert "| hidden_sizes | [64, 32] | [512, 256, 128, 64] |" in text
    assert ("crossval 6 trainings (3 folds x 2 variants, 18 epochs in all), train 3 epochs of l2, "
            "evaluate 30 test images") in text
    assert " s |" not in text and "min" not in text  # no wall-clock time: dvc.lock records the report's hash
    assert "| l2 **(chosen)** |" in text and "Chosen: l2: highest mean validation accuracy" in text
    assert "Weakest class: **Shirt** (F1 0.6670)" in text
    assert "| **Shirt** | 0.7500 | 0.6000 | 0.6670 | 10 |" in text
    assert "Shirt taken for T-shirt/top: 4 (40.0% of Shirt)" in text
    assert "| fold ensemble (mean softmax of the K fold models) | 0.9000 | 0.8990 | 0.3500 | 0.0500 |" in text
    assert "| single final model, temperature-scaled (T = 1.250) | 0.8000 | 0.7980 | 0.3900 | 0.0120 |" in text
    assert "3 are right only for the single model, 6 only for the ensemble; two-sided p = 0.508" in text
    assert "test ECE 0.0610 -> 0.0120, NLL 0.4100 -> 0.3900" in text
    assert "**0.8000** (macro F1 0.7980, loss 0.4100, 30 images; single final model)" in text
    for name, caption in FIGURES:
        assert f"![{caption}](figures/{name})" in text


def test_report_of_default_params_and_a_pinned_variant():
    text = build(dataclasses.replace(Params(), variant="l2"), *inputs())
    assert "| variant | `'l2'` | `'auto'` |" in text
    assert "None: every parameter has foldwise's default value." in build(Params(), *inputs())
    assert "pinned in params.yaml (`variant: l2`)" in text


def test_variants_and_compare_are_left_to_the_cv_section():
    p = dataclasses.replace(Params(), variants={"baseline": {}, "x": {"lr": 0.1}}, compare=("baseline", "x"))
    assert non_defaults(p) == []


def test_confusions_read_naturally():
    counts = confusion_counts(pd.Series(["a", "a", "b"]), pd.Series(["a", "a", "b"]), ["a", "b"])
    assert confused_pairs(counts) == []  # no mistakes, nothing to list

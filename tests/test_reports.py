import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldwise.reports import (classification_metrics, plot_confusion, plot_cv_comparison,
                              plot_learning_curves, provenance)
from foldwise.params import Params
import torch


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3, abs=1e-6), "recall": 1.0,
                                   "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["precision"] == 1.0 and m["per_class"]["c"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]), abs=1e-6)


def test_provenance_records_what_made_the_result():
    record = provenance(Params(), "l2", torch.device("cpu"))
    assert record["variant"] == "l2" and record["device"] == "cpu" and record["seed"] == 42
    assert record["torch"] == torch.__version__


def history(variant=None, folds=1):
    rows = []
    for fold in range(folds):
        for epoch in (1, 2, 3):
            row = {"epoch": epoch, "train_loss": 1 / epoch, "valid_loss": 1.1 / epoch,
                   "train_acc": 0.5 + epoch / 10, "valid_acc": 0.45 + epoch / 10}
            if variant:
                row.update(variant=variant, fold=fold)
            rows.append(row)
    return pd.DataFrame(rows)


def assert_png(path, min_size=(400, 300)):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def test_figures_are_written(tmp_path):
    cv = pd.concat([history("baseline", 2), history("l2", 2)])
    plot_learning_curves(cv, history(), tmp_path / "curves.png")
    folds = pd.DataFrame({"variant": ["baseline"] * 3 + ["l2"] * 3, "fold": [0, 1, 2] * 2,
                          "final_valid_acc": [0.80, 0.82, 0.81, 0.85, 0.86, 0.84]})
    plot_cv_comparison(folds, "l2", tmp_path / "cv.png")
    classes = ["T-shirt/top", "Trouser", "Ankle boot"]
    preds = pd.DataFrame({"actual": classes * 4, "predicted": classes * 3 + classes[::-1]})
    plot_confusion(preds, classes, tmp_path / "confusion.png")
    for name in ("curves.png", "cv.png", "confusion.png"):
        assert_png(tmp_path / name)

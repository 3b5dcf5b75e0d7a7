"""The small CSV files `dvc plots` draws: curve families, confusion counts, per-class scores.

They stay small whatever the dataset: curves are means over folds (one row
per run and epoch), the confusion counts one row per pair of classes, and the
per-image predictions are sampled down to ``MAX_PREDICTION_ROWS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Rows of predictions.csv, which dvc's confusion templates count in the browser:
# twice the usual 10,000-image test set; a million rows would be megabytes of page.
MAX_PREDICTION_ROWS = 20_000
EXAMPLES = 32  # test images in the "true / predicted" grid of sample predictions
GALLERY = 24  # most confidently misclassified test images shown (and always kept in the sample)
FAMILIES = {"loss": "loss", "accuracy": "acc"}  # file name -> history column suffix


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV written here, class names kept as text ("0" stays "0", "NA" stays "NA")."""
    return pd.read_csv(path, dtype={"actual": str, "predicted": str, "class": str}, keep_default_na=False)


def pick_examples(n_images: int, seed: int, count: int = EXAMPLES) -> np.ndarray:
    """Which test images go in the sample-predictions grid: a fixed, seeded sample, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_images, size=min(count, n_images), replace=False))


def confident_mistakes(predictions: pd.DataFrame, count: int = GALLERY) -> pd.DataFrame:
    """The ``count`` wrong predictions with the highest probability (ties: lower index first)."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    return wrong.sort_values(["calibrated_confidence", "index"], ascending=[False, True], kind="stable").head(count)


def sample_predictions(predictions: pd.DataFrame, seed: int, limit: int = MAX_PREDICTION_ROWS) -> pd.DataFrame:
    """At most ``limit`` rows: all of them when they fit, else a seeded uniform sample that
    always keeps the gallery's confident mistakes; in test-image order."""
    if len(predictions) <= limit:
        return predictions
    keep = confident_mistakes(predictions, min(GALLERY, limit))
    rest = predictions.drop(keep.index)
    picked = rest.sample(n=limit - len(keep), random_state=seed)
    return pd.concat([keep, picked]).sort_values("index")


def confusion(actual: Any, predicted: Any, labels: Any) -> np.ndarray:
    """Counts of (true, predicted) pairs: row = true class, column = predicted, both in ``labels``' order
    (class names or indices; a class nobody predicted or holds keeps its zero row and column)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(actual), np.asarray(predicted), labels=list(labels))


def confusion_counts(actual: pd.Series, predicted: pd.Series, classes: list[str]) -> pd.DataFrame:
    """One row per (true, predicted) pair of classes, zeros included: exact, and at most classes^2 rows."""
    matrix = confusion(actual, predicted, classes)
    i, j = np.indices(matrix.shape)
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({"actual": names[i.ravel()], "predicted": names[j.ravel()], "count": matrix.ravel()})


def counts_matrix(counts: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """``confusion_counts`` back to a classes x classes matrix (rows true, columns predicted)."""
    table = counts.pivot_table(index="actual", columns="predicted", values="count", aggfunc="sum", fill_value=0)
    return table.reindex(index=classes, columns=classes, fill_value=0).to_numpy()


def per_class(metrics: dict[str, Any]) -> pd.DataFrame:
    """evaluate's per-class precision / recall / F1 / support as a table, in class order."""
    rows = [{"class": name, **scores} for name, scores in metrics["per_class"].items()]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])


def curve_families(cv_history: pd.DataFrame, train_history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per family (loss, accuracy): epoch, run, train, valid; one run per CV variant (mean over
    its folds) and the final model."""
    out = {}
    for family, suffix in FAMILIES.items():
        columns = {f"train_{suffix}": "train", f"valid_{suffix}": "valid"}
        parts = []
        for label, frame in (("CV", cv_history), ("final", train_history)):
            mean = frame.groupby(["variant", "epoch"], sort=False)[list(columns)].mean().reset_index()
            mean["run"] = f"{label} " + mean["variant"]
            parts.append(mean)
        table = pd.concat(parts).rename(columns=columns)
        out[family] = table[["epoch", "run", "train", "valid"]].round(6)
    return out

"""Test metrics (scikit-learn), provenance records and figures (matplotlib)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support  # noqa: E402

from foldwise.params import Params  # noqa: E402


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision / recall / F1 / support."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(np.mean(y_true == y_pred)), 6),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 6),
        "per_class": {
            name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                   "f1": round(float(f1[i]), 6), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
    }


def provenance(p: Params, variant: str, device: torch.device) -> dict[str, Any]:
    """What produced a result: data, model, variant, seed, device and library versions."""
    return {
        "dataset": p.dataset, "model": p.model, "variant": variant, "seed": p.seed,
        "device": device.type, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _curves(ax_loss: Any, ax_acc: Any, frame: pd.DataFrame, label: str, color: Any) -> None:
    """Mean over folds (or the single run) of train (dashed) and valid (solid) curves."""
    mean = frame.groupby("epoch").mean(numeric_only=True)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(mean.index, mean[f"train_{metric}"], "--", color=color, label=f"{label} train")
        ax.plot(mean.index, mean[f"valid_{metric}"], "-", color=color, label=f"{label} valid")


def plot_learning_curves(cv_history: pd.DataFrame, train_history: pd.DataFrame, path: str | Path) -> None:
    """Loss and accuracy per epoch: each CV variant (mean over folds) and the final model."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.cm.tab10.colors
    for i, (variant, frame) in enumerate(cv_history.groupby("variant", sort=False)):
        _curves(ax_loss, ax_acc, frame, f"CV {variant}", colors[i % 10])
    _curves(ax_loss, ax_acc, train_history, "final", "black")
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss (nats per image)")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (fraction correct)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cv_comparison(folds: pd.DataFrame, chosen: str, path: str | Path, score: str = "final_valid_acc") -> None:
    """Fold accuracies per variant (points), their mean and std (bar), the chosen one marked."""
    variants = list(dict.fromkeys(folds["variant"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 2.5, 4.5))
    for i, variant in enumerate(variants):
        values = folds.loc[folds["variant"] == variant, score].to_numpy()
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        is_chosen = variant == chosen
        ax.bar(i, values.mean(), yerr=std, capsize=6, color="tab:orange" if is_chosen else "tab:blue", alpha=0.5)
        ax.scatter(np.full(len(values), i), values, color="black", s=14, zorder=3)
    ax.set_xticks(range(len(variants)),
                  [f"{v}\n(chosen)" if v == chosen else v for v in variants])
    lo = folds[score].min()
    hi = folds[score].max()
    pad = max(0.005, (hi - lo) * 0.5)
    ax.set_ylim(lo - pad, min(1.0, hi + pad))
    ax.set(title=f"Cross-validation: validation accuracy per fold ({folds['fold'].nunique()} folds)",
           ylabel="validation accuracy (fraction)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(predictions: pd.DataFrame, classes: list[str], path: str | Path) -> None:
    """Confusion-matrix heatmap with counts, rows = true class, columns = predicted."""
    matrix = confusion_matrix(predictions["actual"], predictions["predicted"], labels=classes)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    threshold = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    ax.set(title=f"Confusion matrix on test ({matrix.sum()} images)", xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples_grid(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                  classes: list[str]) -> np.ndarray:
    """uint8 N x C x H x W images -> one 3 x H x W uint8 picture, each titled "true / predicted"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * 1.2, rows * 1.7), dpi=100)  # no pyplot: safe off the main thread
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{classes[actual[i]]} /\n{classes[predicted[i]]}", fontsize=8,
                     color="black" if actual[i] == predicted[i] else "red")
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))

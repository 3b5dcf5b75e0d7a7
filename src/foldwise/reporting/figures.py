"""The PNG figures under reports/figures (matplotlib), readable at a glance.

Every figure is built on a ``matplotlib.figure.Figure`` (not pyplot), so the
live monitor can draw one from its background thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
          "tab:gray", "tab:red", "gold")  # orange marks the chosen variant; black the final model
CHOSEN = "tab:orange"


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as PNG (matplotlib picks its Agg renderer for the file type)."""
    fig.savefig(path, dpi=DPI)


def _variant_colors(variants: list[str], chosen: str) -> dict[str, str]:
    others = iter(COLORS * (len(variants) // len(COLORS) + 1))
    return {v: CHOSEN if v == chosen else next(others) for v in variants}


def learning_curves(cv_history: pd.DataFrame, train_history: pd.DataFrame, chosen: str) -> Figure:
    """Loss and accuracy per epoch: each CV variant's mean over folds with a +-1 std band
    (valid solid, train dashed), and the final model in black."""
    fig = Figure(figsize=(13, 5.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    variants = list(dict.fromkeys(cv_history["variant"]))
    colors = _variant_colors(variants, chosen)
    folds = cv_history["fold"].nunique() if len(cv_history) else 0
    for variant in variants:
        per_epoch = cv_history[cv_history["variant"] == variant].groupby("epoch")
        mean, std = per_epoch.mean(numeric_only=True), per_epoch.std(numeric_only=True).fillna(0.0)
        z = 2.5 if variant == chosen else 2  # the chosen variant's lines on top of the others
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            valid, spread = mean[f"valid_{metric}"], std[f"valid_{metric}"]
            ax.plot(mean.index, valid, "-", color=colors[variant], label=f"CV {variant} valid", zorder=z)
            ax.fill_between(mean.index, valid - spread, valid + spread, color=colors[variant], alpha=0.18,
                            linewidth=0)
            ax.plot(mean.index, mean[f"train_{metric}"], "--", color=colors[variant], alpha=0.8,
                    label=f"CV {variant} train", zorder=z)
    final = train_history.groupby("epoch").mean(numeric_only=True)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(final.index, final[f"valid_{metric}"], "-", color="black", linewidth=2, label="final model valid")
        ax.plot(final.index, final[f"train_{metric}"], "--", color="black", linewidth=2, label="final model train")
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.set(title="Cross-entropy loss (lower is better)", ylabel="loss (nats per image)")
    ax_acc.set(title="Accuracy (higher is better)", ylabel="accuracy (fraction of images correct)")
    band = f"; bands: mean +- 1 std over {folds} folds" if folds > 1 else ""
    fig.suptitle(f"Learning curves: solid = validation, dashed = training{band}; {chosen} = chosen (orange)",
                 fontsize=10)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 0.96))
    return fig


def cv_comparison(folds: pd.DataFrame, chosen: str, score: str = "final_valid_acc") -> Figure:
    """Box plot of the fold accuracies per variant, every fold a point, the mean a diamond;
    the chosen variant orange and labelled."""
    variants = list(dict.fromkeys(folds["variant"]))
    colors = _variant_colors(variants, chosen)
    values = [folds.loc[folds["variant"] == v, score].to_numpy(dtype=float) for v in variants]
    fig = Figure(figsize=(max(5.0, 1.5 * len(variants) + 2.5), 4.8))
    ax = fig.subplots()
    boxes = ax.boxplot(values, positions=range(len(variants)), widths=0.5, patch_artist=True,
                       showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # jitter only; the same picture every run
    for i, (variant, box) in enumerate(zip(variants, boxes["boxes"])):
        box.set(facecolor=colors[variant], alpha=0.35)
        jitter = rng.uniform(-0.12, 0.12, len(values[i]))
        ax.scatter(i + jitter, values[i], color=colors[variant], edgecolor="black", s=28, zorder=3,
                   label="fold" if i == 0 else None)
        ax.scatter([i], [values[i].mean()], marker="D", color="white", edgecolor="black", s=40, zorder=4,
                   label="mean" if i == 0 else None)
    ax.set_xticks(range(len(variants)), [f"{v}\n(chosen)" if v == chosen else v for v in variants])
    for tick, variant in zip(ax.get_xticklabels(), variants):
        if variant == chosen:
            tick.set_fontweight("bold")
    ax.set(title=f"Cross-validation: validation accuracy of each of {folds['fold'].nunique()} folds",
           xlabel="variant", ylabel="validation accuracy (fraction)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, classes: list[str]) -> Figure:
    """Heatmap of counts (rows = true class, columns = predicted), each cell's count printed,
    coloured by the fraction of its true class so small classes stay visible."""
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.65 * len(classes) + 2.5)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    slanted = max(map(len, classes)) <= 12  # longer names, slanted, would run into their neighbours
    ax.set_xticks(range(len(classes)), classes, rotation=45 if slanted else 90, ha="right" if slanted else "center")
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 30:  # beyond that the numbers cannot be read anyway
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set(title=f"Test confusion matrix: {matrix.sum()} images, accuracy {accuracy:.4f}",
           xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="fraction of the true class", fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def reliability_diagram(bins: pd.DataFrame, model: str, temperature: float) -> Figure:
    """Accuracy against mean confidence per confidence bin (the diagonal is perfect calibration),
    before and after temperature scaling, above the number of test images in each bin.
    ``bins``: evaluate's calibration.csv (``probabilities``: uncalibrated | calibrated)."""
    from foldwise.reporting.calibration import ece_of

    fig = Figure(figsize=(6.4, 7.0))
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1.2), sharex=True)
    top.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    styles = {"uncalibrated": ("tab:red", "o-", -0.225), "calibrated": ("tab:blue", "s-", 0.225)}
    width = float((bins["upper"] - bins["lower"]).iloc[0]) if len(bins) else 1 / 15
    for kind, (color, marker, shift) in styles.items():
        table = bins[bins["probabilities"] == kind]
        full = table[table["count"] > 0]
        label = (f"{kind}" if kind == "uncalibrated" else f"calibrated (T = {temperature:.3f})")
        top.plot(full["confidence"], full["accuracy"], marker, color=color, markersize=4,
                 label=f"{label}: ECE {ece_of(table):.4f}")
        bottom.bar((table["lower"] + table["upper"]) / 2 + shift * width, table["count"], width=width * 0.45,
                   color=color, alpha=0.6, label=kind)
    top.set(title=f"Reliability on the test set: {model}", ylabel="accuracy in the bin (fraction)",
            xlim=(0, 1.01), ylim=(0, 1.01))
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence: the predicted class's probability (15 equal-width bins)",
               ylabel="test images", yscale="log")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def title(true: str, predicted: str, confidence: float | None = None) -> str:
    """A gallery title: "true / predicted (p)", on two lines so long class names fit."""
    p = "" if confidence is None else f" ({confidence:.2f})"
    return f"{true} /\n{predicted}{p}"


def image_grid(images: np.ndarray, titles: list[str], wrong: np.ndarray, heading: str = "",
               cols: int = 8) -> Figure:
    """uint8 N x C x H x W images in a grid, each titled; wrong predictions' titles in red."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(cols * 1.45, rows * 1.8 + (0.4 if heading else 0)), dpi=100, layout="constrained")
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=8, color="red" if wrong[i] else "black")
        ax.axis("off")
    if n == 0:
        fig.text(0.5, 0.4, "no images", ha="center", va="center", fontsize=10)
    if heading:
        fig.suptitle(heading, fontsize=10)
    return fig


def gallery(images: np.ndarray, rows: pd.DataFrame, heading: str) -> Figure:
    """Test images with evaluate's rows (actual, predicted, calibrated_confidence), titled "true / predicted (p)"."""
    titles = [title(a, p, c) for a, p, c in zip(rows["actual"], rows["predicted"], rows["calibrated_confidence"])]
    return image_grid(images, titles, (rows["actual"] != rows["predicted"]).to_numpy(), heading)


def to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as a 3 x H x W uint8 picture (for Visdom)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))


def examples_grid(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                  classes: list[str]) -> np.ndarray:
    """uint8 N x C x H x W images -> one 3 x H x W uint8 picture, each titled "true / predicted"."""
    titles = [title(classes[a], classes[p]) for a, p in zip(actual, predicted)]
    return to_array(image_grid(images, titles, np.asarray(actual) != np.asarray(predicted)))

"""K-fold cross-validation of every regularisation variant on the same folds.

Folds are computed once (stratified, seeded) and shared by all variants, and
fold ``f`` starts every variant from the same initial weights, so the
comparison is paired: differences come from the variant, not from luck.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from foldwise.engine import as_batches, fit, seed_everything
from foldwise.models import build_model
from foldwise.monitor import Monitor
from foldwise.params import Params

# The fold score: valid accuracy after the last epoch. The best epoch's
# accuracy is reported too, but it is chosen on the same fold it is measured
# on, so it is optimistic and not used for the choice.
SCORE = "final_valid_acc"


def make_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded (train_idx, valid_idx) pairs; every class needs >= k images."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < k:
        raise ValueError(
            f"k_folds={k} needs at least {k} training images per class; the smallest class "
            f"has {present.min()}. Lower k_folds or raise max_images_per_split."
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


@dataclass
class CVResult:
    """Per-epoch history of every run, one row per (variant, fold), and the summary."""

    history: pd.DataFrame
    folds: pd.DataFrame
    summary: dict[str, Any]


def summarize(folds: pd.DataFrame) -> dict[str, Any]:
    """Mean and sample std of the fold score per variant, and the best variant.

    Numbers only (plus the chosen name), so `dvc metrics diff` stays a
    readable table; ``explain_choice`` turns it into a sentence.
    """
    order = list(dict.fromkeys(folds["variant"]))
    stats = folds.groupby("variant", sort=False).agg(
        valid_acc_mean=(SCORE, "mean"), valid_acc_std=(SCORE, "std"),
        valid_loss_mean=("final_valid_loss", "mean"), best_valid_acc_mean=("best_valid_acc", "mean"),
        folds=("fold", "count"),
    ).reindex(order)
    stats["valid_acc_std"] = stats["valid_acc_std"].fillna(0.0)
    ranked = stats.sort_values("valid_acc_mean", ascending=False, kind="stable")  # ties: params order
    return {
        "variants": {
            name: {k: (int(v) if k == "folds" else round(float(v), 6)) for k, v in row.items()}
            for name, row in stats.iterrows()
        },
        "chosen": str(ranked.index[0]),
    }


def explain_choice(summary: dict[str, Any]) -> str:
    """Why ``summary['chosen']`` won, with the runner-up for scale."""
    variants = summary["variants"]
    best = summary["chosen"]
    line = (f"{best}: highest mean validation accuracy after the last epoch over "
            f"{variants[best]['folds']} folds ({variants[best]['valid_acc_mean']:.4f} ± "
            f"{variants[best]['valid_acc_std']:.4f})")
    others = sorted((v for v in variants if v != best), key=lambda v: -variants[v]["valid_acc_mean"])
    if others:
        line += f"; next: {others[0]} ({variants[others[0]]['valid_acc_mean']:.4f})"
    return line


def run_crossval(data: Any, num_classes: int, p: Params, monitor: Monitor | None = None) -> CVResult:
    """Train every variant on every fold of ``data`` (a batch source, or normalised (x, y) on the device)."""
    data = as_batches(data)
    device = data.labels.device
    folds = make_folds(data.labels.cpu().numpy(), p.k_folds, p.seed)
    history: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for variant in p.variants:
        vp = p.for_variant(variant)
        for fold, (train_idx, valid_idx) in enumerate(folds):
            seed = p.seed + fold  # same start for every variant on this fold
            seed_everything(seed)
            model = build_model(data.shape, num_classes, vp).to(device)
            started = time.perf_counter()
            result = fit(model, data.subset(train_idx), data.subset(valid_idx), vp, seed, monitor,
                         tags={"variant": variant, "fold": fold})
            last = result.history[-1]
            best = result.history[result.best_epoch - 1]
            rows.append({
                "variant": variant, "fold": fold, "final_valid_acc": last["valid_acc"],
                "final_valid_loss": last["valid_loss"], "best_valid_acc": best["valid_acc"],
                "best_epoch": result.best_epoch, "epochs": len(result.history),
                "seconds": round(time.perf_counter() - started, 2),
            })
            history.extend(result.history)
    folds_df = pd.DataFrame(rows)
    summary = {"k_folds": p.k_folds, **summarize(folds_df)}
    return CVResult(pd.DataFrame(history), folds_df, summary)

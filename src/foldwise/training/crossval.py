"""K-fold cross-validation of every compared variant on the same folds.

Folds are computed once (stratified, seeded) and shared by all variants, and
fold ``f`` starts every variant from the same initial weights and the same
batch order, so the comparison is paired: differences come from the variant,
not from luck. The summary gives each variant's mean, standard deviation and
95% confidence interval across folds, and its paired difference from the
reference variant (``baseline``) with a p-value.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from foldwise.core.params import Params
from foldwise.data.batches import BatchSource
from foldwise.reporting.cvstats import summarize
from foldwise.training.augment import check_augment
from foldwise.training.engine import fit, seed_everything
from foldwise.training.models import build_model, check_model
from foldwise.training.monitor import Monitor
from foldwise.training.resume import Checkpoints

def make_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded (train_idx, valid_idx) pairs; every class needs >= k images."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < k:
        smallest = int(np.flatnonzero(counts == present.min())[0])
        raise ValueError(
            f"k_folds: {k} is larger than the smallest class (label {smallest}: {present.min()} training "
            f"images); valid: 2 to {present.min()}. Lower k_folds or raise max_images_per_split."
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


@dataclass
class CVResult:
    """Per-epoch history of every run, one row per (variant, fold), and the summary."""

    history: pd.DataFrame
    folds: pd.DataFrame
    summary: dict[str, Any]


def run_crossval(data: BatchSource, num_classes: int, p: Params, monitor: Monitor | None = None,
                 checkpoints: Checkpoints | None = None) -> CVResult:
    """Train every compared variant on every fold of ``data`` (a labelled batch source).

    Everything that can be wrong with the params (folds, model, weights file,
    augmentation) fails before the first epoch. With ``checkpoints``, runs
    finished before an interruption are not repeated and the interrupted run
    continues from its last epoch.
    """
    device = data.labels.device  # pragma: no mutate (CUDA only: on a CPU None is the same device)
    folds = make_folds(data.labels.cpu().numpy(), p.k_folds, p.seed)
    for variant in p.compared:
        vp = p.for_variant(variant)
        check_model(data.shape, num_classes, vp)
        check_augment(data.shape, vp)
    history: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    runs = [(v, f) for v in p.compared for f in range(len(folds))]
    for index, (variant, fold) in enumerate(runs):
        name = f"run{index:03d}"
        saved = checkpoints.load(name) if checkpoints else None
        if saved is not None and saved.get("done"):
            rows.append(saved["row"])
            history.extend(saved["history"])
            if monitor is not None:
                monitor.on_resume(saved["history"])
                monitor.on_fold_end(saved["row"])
            continue
        if saved is not None:
            print(f"resuming {variant} fold {fold} after epoch {len(saved['result']['history'])}", file=sys.stderr)
        train_idx, valid_idx = folds[fold]
        vp = p.for_variant(variant)
        seed = p.seed + fold  # same start for every variant on this fold
        seed_everything(seed)
        model = build_model(data.shape, num_classes, vp).to(device)  # pragma: no mutate (as device)
        started = time.perf_counter() - (saved or {}).get("seconds", 0.0)  # pragma: no mutate (console time only)

        def save(state: dict[str, Any], name: str = name, started: float = started) -> None:
            checkpoints.save(name, {**state, "seconds": time.perf_counter() - started})

        result = fit(model, data.subset(train_idx), data.subset(valid_idx), vp, seed, monitor,
                     tags={"variant": variant, "fold": fold}, resume=saved,
                     checkpoint=save if checkpoints else None)
        final = result.final
        row = {
            "variant": variant, "fold": fold,
            "final_valid_acc": final["valid_acc"], "final_valid_loss": final["valid_loss"],
            "best_valid_acc": max(r["valid_acc"] for r in result.history),
            "best_valid_loss": min(r["valid_loss"] for r in result.history),
            "best_epoch": result.best_epoch, "epochs": len(result.history),
            "stopped_early": result.stopped_early,
        }
        # wall-clock time goes to the console only: committed results must not change run to run
        print(f"{variant} fold {fold}: {len(result.history)} epochs in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        if checkpoints:
            checkpoints.save(name, {"done": True, "row": row, "history": result.history})
        rows.append(row)
        history.extend(result.history)
        if monitor is not None:
            monitor.on_fold_end(row)
    folds_df = pd.DataFrame(rows)
    summary = {"k_folds": p.k_folds, **summarize(folds_df)}
    return CVResult(pd.DataFrame(history), folds_df, summary)

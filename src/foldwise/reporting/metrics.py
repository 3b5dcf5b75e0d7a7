"""Test metrics (scikit-learn) and provenance records."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch

from foldwise.core.params import Params


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision / recall / F1 / support."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support  # 1 s to import: only evaluate needs it

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
    import torchvision  # its build tag (+cu132) is not in the package metadata; 1-2 s to import

    return {
        "dataset": p.dataset, "model": p.model, "variant": variant, "seed": p.seed,
        "device": device.type, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }

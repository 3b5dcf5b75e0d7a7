"""Test metrics (scikit-learn) and provenance records."""

from __future__ import annotations

import platform
from pathlib import Path
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


def torchvision_version() -> str:
    """``torchvision.__version__`` (with its build tag, e.g. 0.29.2+cu132, which the package metadata
    lacks) read from its version.py: importing torchvision would cost evaluate about a second."""
    import ast
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    try:
        source = Path(spec.origin).with_name("version.py").read_text()
        line = next(line for line in source.splitlines() if line.startswith("__version__ = "))
        return str(ast.literal_eval(line.split("=", 1)[1].strip()))
    except (AttributeError, TypeError, OSError, StopIteration, ValueError, SyntaxError):
        return importlib.metadata.version("torchvision")  # a layout this torchvision does not have


def provenance(p: Params, variant: str, device: torch.device) -> dict[str, Any]:
    """What produced a result: data, model, variant, seed, device and library versions."""
    return {
        "dataset": p.dataset, "model": p.model, "variant": variant, "seed": p.seed,
        "device": device.type, "torch": torch.__version__, "torchvision": torchvision_version(),
        "python": platform.python_version(),
    }


def headline_metrics(rows: list[dict[str, Any]], used: str, paired: dict[str, Any] | None) -> dict[str, Any]:
    """evaluate's metrics.json from its predictor rows (``training.ensemble.Assessment.rows``, the
    temperature-scaled model last): ``test`` the single final model (as before the ensemble existed,
    so older revisions diff), ``ensemble`` the fold ensemble's accuracy and McNemar's p against the
    single model, ``tta`` the model used with test-time flips, ``calibration`` the model used's ECE
    before and after temperature scaling. Seven values by default (eight with tta), so that with
    cv.json and train.json ``dvc exp show`` stays within 20 columns; the rest (NLL, temperature,
    which model) is in comparison.json."""
    by = {row["name"]: row for row in rows}
    single = by["single"]
    out: dict[str, Any] = {"test": {"loss": single["nll"], "accuracy": single["accuracy"],
                                    "macro_f1": single["macro_f1"]}}
    if "ensemble" in by:
        out["ensemble"] = {"accuracy": by["ensemble"]["accuracy"], "mcnemar_p": paired["p_value"] if paired else 1.0}
    if used.endswith("+tta"):
        out["tta"] = {"accuracy": by[used]["accuracy"]}
    out["calibration"] = {"ece_before": by[used]["ece"], "ece": rows[-1]["ece"]}
    return out

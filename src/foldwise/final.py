"""The final model: the chosen variant trained on train, checkpointed, evaluated on test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.data import ImageSet
from foldwise.engine import FitResult, fit, predict, seed_everything, to_inputs
from foldwise.models import build_model
from foldwise.monitor import Monitor
from foldwise.outputs import atomic_file
from foldwise.params import Params, parse_params
from foldwise.reports import classification_metrics


def resolve_variant(p: Params, cv_summary: dict[str, Any]) -> tuple[str, str]:
    """The variant to train and where it came from: ``pinned`` in params.yaml or ``crossval``."""
    if p.variant != "auto":
        return p.variant, "pinned"
    chosen = cv_summary.get("chosen")
    if chosen not in p.variants:
        raise ValueError(
            f"crossval chose variant {chosen!r}, which params.yaml no longer defines "
            f"(valid: {', '.join(p.variants)}); re-run crossval (dvc repro)"
        )
    return chosen, "crossval"


def train_final(train: ImageSet, valid: ImageSet, stats: dict[str, Any], p: Params, variant: str,
                device: torch.device, monitor: Monitor | None = None) -> tuple[nn.Module, FitResult]:
    """Train ``variant`` on train, validating on valid each epoch; return the best epoch's model."""
    vp = p.for_variant(variant)
    seed_everything(p.seed)
    model = build_model(tuple(train.images.shape[1:]), len(train.classes), vp).to(device)
    result = fit(model, (to_inputs(train.images, stats, device), train.labels.to(device)),
                 (to_inputs(valid.images, stats, device), valid.labels.to(device)),
                 vp, p.seed, monitor, tags={"variant": variant})
    model.load_state_dict(result.best_state)
    return model, result


def save_checkpoint(path: str | Path, model: nn.Module, p: Params, variant: str, classes: list[str],
                    stats: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Everything needed to rebuild and use the model without params.yaml or the stats file."""
    with atomic_file(path) as tmp:
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "params": p.for_variant(variant).to_dict(), "variant": variant,
                    "classes": classes, "stats": stats, "shape": list(shape)}, tmp)


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by ``save_checkpoint``, in eval mode on ``device``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    p = parse_params(checkpoint["params"], f"{path} (params)")
    model = build_model(tuple(checkpoint["shape"]), len(checkpoint["classes"]), p)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def evaluate_on(model: nn.Module, checkpoint: dict[str, Any], test: ImageSet,
                device: torch.device) -> tuple[dict[str, Any], pd.DataFrame]:
    """Test metrics, and one (actual, predicted) row per image for the confusion plot."""
    if test.classes != checkpoint["classes"]:
        raise ValueError(f"test classes {test.classes} differ from the model's {checkpoint['classes']}")
    logits = predict(model, to_inputs(test.images, checkpoint["stats"], device))
    loss = F.cross_entropy(logits, test.labels.to(device)).item()
    predicted = logits.argmax(1).cpu().numpy()
    actual = test.labels.numpy()
    metrics = {"loss": round(loss, 6), **classification_metrics(actual, predicted, test.classes)}
    names = pd.Series(test.classes)
    rows = pd.DataFrame({"actual": names[actual].to_numpy(), "predicted": names[predicted].to_numpy()})
    return metrics, rows

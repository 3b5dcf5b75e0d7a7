"""The final model: the chosen variant trained on train, checkpointed, evaluated on test."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from foldwise.core.outputs import atomic_file
from foldwise.core.params import Params, parse_params
from foldwise.data.batches import BatchSource
from foldwise.reporting.cvstats import explain_choice
from foldwise.reporting.metrics import classification_metrics
from foldwise.training.augment import check_augment
from foldwise.training.engine import FitResult, evaluate, fit, seed_everything
from foldwise.training.models import build_model, check_model
from foldwise.training.monitor import Monitor
from foldwise.training.resume import Checkpoints


def resolve_variant(p: Params, cv_summary: dict[str, Any]) -> tuple[str, str, str]:
    """The variant to train, where it came from (``pinned`` or ``crossval``) and why."""
    chosen = cv_summary.get("chosen")
    if p.variant != "auto":
        return p.variant, "pinned", (f"pinned in params.yaml (variant: {p.variant}); "
                                     f"crossval's best mean was {chosen}")
    if chosen not in p.compared:
        raise ValueError(
            f"crossval chose variant {chosen!r}, which params.yaml no longer compares "
            f"(compare: {', '.join(p.compared)}); re-run crossval (dvc repro)"
        )
    return chosen, "crossval", explain_choice(cv_summary)


def train_final(train: BatchSource, valid: BatchSource, num_classes: int, p: Params, variant: str,
                monitor: Monitor | None = None,
                checkpoints: Checkpoints | None = None) -> tuple[nn.Module, FitResult]:
    """Train ``variant`` on train, validating on valid each epoch; return the best epoch's model.

    ``train`` and ``valid`` are batch sources (``data.batches.open_split``) on the
    training device. With ``checkpoints``, an interrupted run continues from
    its last finished epoch.
    """
    vp = p.for_variant(variant)
    check_model(train.shape, num_classes, vp)
    check_augment(train.shape, vp)
    seed_everything(p.seed)
    model = build_model(train.shape, num_classes, vp).to(train.labels.device)
    saved = checkpoints.load("final") if checkpoints else None
    if saved is not None:
        print(f"resuming training after epoch {len(saved['result']['history'])}", file=sys.stderr)
    result = fit(model, train, valid, vp, p.seed, monitor, tags={"variant": variant}, resume=saved,
                 checkpoint=(lambda state: checkpoints.save("final", state)) if checkpoints else None)
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
    # the saved weights replace everything: no need for the ImageNet file again
    p = dataclasses.replace(p, pretrained=False, pretrained_path="")
    model = build_model(tuple(checkpoint["shape"]), len(checkpoint["classes"]), p)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def evaluate_on(model: nn.Module, checkpoint: dict[str, Any], test: BatchSource,
                classes: list[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Test metrics, and one row per test image, in order: its index, true and predicted class
    names, and the predicted class's softmax probability (``confidence``).

    ``test`` is a batch source normalised with the checkpoint's stats.
    """
    if classes != checkpoint["classes"]:
        raise ValueError(f"test classes {classes} differ from the model's {checkpoint['classes']}")
    result = evaluate(model, test)
    predicted, actual = result.predicted.cpu().numpy(), test.labels.cpu().numpy()
    metrics = {"loss": round(result.loss, 6), **classification_metrics(actual, predicted, classes)}
    names = pd.Series(classes)
    rows = pd.DataFrame({"index": range(len(actual)), "actual": names[actual].to_numpy(),
                         "predicted": names[predicted].to_numpy(),
                         "confidence": result.confidence.cpu().numpy().round(4)})
    return metrics, rows

"""The final model: the chosen (or pinned) variant trained on the whole train split."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from foldwise.core.params import Params
from foldwise.data.batches import BatchSource
from foldwise.reporting.cvstats import explain_choice
from foldwise.training.augment import check_augment
from foldwise.training.callbacks import Monitor
from foldwise.training.ddp import SINGLE, Group
from foldwise.training.engine import RANK_SEED_STEP, FitResult, fit, seed_everything, to_training_layout
from foldwise.training.models import build_model, check_model
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
                monitor: Monitor | None = None, checkpoints: Checkpoints | None = None,
                group: Group = SINGLE) -> tuple[nn.Module, FitResult]:
    """Train ``variant`` on train, validating on valid each epoch; return the best epoch's model.

    ``train`` and ``valid`` are batch sources (``data.batches.open_split``) on the
    training device. With ``checkpoints``, an interrupted run continues from
    its last finished epoch. Under DDP every process of ``group`` calls this; process 0
    alone writes the checkpoints.
    """
    vp = p.for_variant(variant)
    check_model(train.shape, num_classes, vp)
    check_augment(train.shape, vp)
    seed_everything(p.seed)
    model = build_model(train.shape, num_classes, vp).to(train.labels.device)
    trained: nn.Module = model
    if group.world > 1:
        to_training_layout(model)  # before DDP registers the parameters' layout
        trained = DistributedDataParallel(model)  # every process starts from process 0's weights
        torch.manual_seed(p.seed + RANK_SEED_STEP * group.rank)  # each its own dropout masks
    saved = checkpoints.load("final") if checkpoints else None
    if saved is not None and group.main:
        print(f"resuming training after epoch {len(saved['result']['history'])}", file=sys.stderr)
    save = (lambda state: checkpoints.save("final", state) if group.main else None) if checkpoints else None
    result = fit(trained, train, valid, vp, p.seed, monitor, tags={"variant": variant}, resume=saved,
                 checkpoint=save, group=group)
    model.load_state_dict(result.best_state)
    return model, result

"""The final model: the chosen variant trained on train, checkpointed, evaluated on test."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from foldwise.core.errors import UserError
from foldwise.core.cli import locked_md5
from foldwise.core.outputs import atomic_file
from foldwise.core.params import Params, parse_params
from foldwise.data.batches import BatchSource
from foldwise.reporting.cvstats import explain_choice
from foldwise.reporting.metrics import classification_metrics
from foldwise.training.augment import check_augment
from foldwise.training.ddp import SINGLE, Group
from foldwise.training.engine import RANK_SEED_STEP, FitResult, evaluate, fit, seed_everything, to_training_layout
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


def save_checkpoint(path: str | Path, model: nn.Module, p: Params, variant: str, classes: list[str],
                    stats: dict[str, Any], shape: tuple[int, ...]) -> str:
    """Everything needed to rebuild and use the model without params.yaml or the stats file;
    returns the file's sha256 (hex), which train records so that loading can check it."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "params": p.for_variant(variant).to_dict(), "variant": variant,
                "classes": classes, "stats": stats, "shape": list(shape)}, buffer)
    data = buffer.getvalue()
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def model_record(path: str | Path, sha256: str) -> dict[str, Any]:
    """What train records of the model file it wrote, for ``load_checkpoint`` to check."""
    return {"path": Path(path).as_posix(), "sha256": sha256, "bytes": Path(path).stat().st_size}


def read_record(path: str | Path) -> str:
    """The sha256 in a ``model_record`` file; a ``UserError`` when it has none."""
    try:
        sha256 = json.loads(Path(path).read_text()).get("sha256", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: not a model record ({exc}); train again: `dvc repro -f train`") from None
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise UserError(f"{path}: no sha256 of the model in it; train again: `dvc repro -f train`")
    return sha256


def _restore(path: str | Path) -> str:
    """How to get a good copy of model ``path`` back (built only for an error: it reads dvc.lock)."""
    md5 = locked_md5(path)
    cached = (f'`rm -f "$(dvc cache dir)/files/md5/{md5[:2]}/{md5[2:]}"`' if md5 else
              "the file named by its md5 in dvc.lock under `dvc cache dir`/files/md5/")
    return (f"restore it from DVC's cache with `dvc checkout -f {path}`; if this error comes back, the "
            f"cached copy is damaged too: delete it ({cached}) and train again: `dvc repro -f train`")


def load_checkpoint(path: str | Path, device: torch.device, sha256: str = "",
                    recorded_in: str = "train's model record") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by ``save_checkpoint``, in eval mode on ``device``.

    With ``sha256`` (what train recorded, in ``recorded_in``), the file is checked first: DVC
    does not re-hash a file it checked out, so a damaged cache object would otherwise give a
    wrong model silently. A mismatch, or a file torch cannot read, is a ``UserError`` naming
    the file and the fix.
    """
    try:
        data = Path(path).read_bytes()  # hashed and loaded from the same bytes: the file is read once
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {_restore(path)}") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 and actual != sha256:
        raise UserError(f"{path} is damaged: its sha256 is {actual}, but train wrote {sha256} "
                        f"(recorded in {recorded_in}); {_restore(path)}")
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises OSError, RuntimeError, EOFError, UnpicklingError...
        raise UserError(f"{path} is not a readable foldwise model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); {_restore(path)}") from None
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

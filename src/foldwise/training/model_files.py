"""Model files: the final model (models/model.pt) and crossval's fold models (models/folds/).

A model file holds everything needed to rebuild and use the model without
params.yaml or the stats file: weights, the variant's params, classes, the
normalisation stats and the image shape. Its sha256 is recorded in a separate
small file (train's models/model.json, crossval's models/folds/folds.json) and
checked on loading: DVC does not re-hash a file it checked out, so a damaged
cache object would otherwise give a wrong model silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldwise.core.cli import locked_md5
from foldwise.core.errors import UserError
from foldwise.core.outputs import atomic_dir, atomic_file
from foldwise.core.params import Params, parse_params
from foldwise.training.models import build_model

FOLDS_RECORD = "folds.json"  # in the fold-models folder: what is kept, and each file's sha256
# Params left out of a model file: crossval or train does not track them (they choose what is kept,
# evaluated or how it runs, not the model), so the file's bytes must not depend on them.
NOT_RECORDED = ("fold_models", "ensemble", "tta", "variant", "train_processes", "memory_budget_mb")


def _model_bytes(state_dict: dict[str, torch.Tensor], p: Params, variant: str, classes: list[str],
                 stats: dict[str, Any], shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in state_dict.items()},
                "params": {k: v for k, v in p.for_variant(variant).to_dict().items() if k not in NOT_RECORDED},
                "variant": variant,
                "classes": classes, "stats": stats, "shape": list(shape)}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, model: nn.Module, p: Params, variant: str, classes: list[str],
                    stats: dict[str, Any], shape: tuple[int, ...]) -> str:
    """Everything needed to rebuild and use the model without params.yaml or the stats file;
    returns the file's sha256 (hex), which train records so that loading can check it."""
    data = _model_bytes(model.state_dict(), p, variant, classes, stats, shape)
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
        raise UserError(f"{path}: not a model record ({exc}); train again: `dvc repro -f -s train`") from None
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise UserError(f"{path}: no sha256 of the model in it; train again: `dvc repro -f -s train`")
    return sha256


def _restore(path: str | Path, stage: str = "train") -> str:
    """How to get a good copy of model ``path`` back (built only for an error: it reads dvc.lock)."""
    md5 = locked_md5(path)
    cached = (f'`rm -f "$(dvc cache dir)/files/md5/{md5[:2]}/{md5[2:]}"`' if md5 else
              "the file named by its md5 in dvc.lock under `dvc cache dir`/files/md5/")
    return (f"restore it from DVC's cache with `dvc checkout -f {path}`; if this error comes back, the "
            f"cached copy is damaged too: delete it ({cached}) and train again: `dvc repro -f -s {stage}`")


def load_checkpoint(path: str | Path, device: torch.device, sha256: str = "",
                    recorded_in: str = "train's model record", stage: str = "train"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by ``save_checkpoint``, in eval mode on ``device``.

    With ``sha256`` (what train recorded, in ``recorded_in``), the file is checked first: DVC
    does not re-hash a file it checked out, so a damaged cache object would otherwise give a
    wrong model silently. A mismatch, or a file torch cannot read, is a ``UserError`` naming
    the file and the fix (``stage`` wrote the file).
    """
    try:
        data = Path(path).read_bytes()  # hashed and loaded from the same bytes: the file is read once
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {_restore(path, stage)}") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 and actual != sha256:
        raise UserError(f"{path} is damaged: its sha256 is {actual}, but {stage} wrote {sha256} "
                        f"(recorded in {recorded_in}); {_restore(path, stage)}")
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises OSError, RuntimeError, EOFError, UnpicklingError...
        raise UserError(f"{path} is not a readable foldwise model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); {_restore(path, stage)}") from None
    p = parse_params(checkpoint["params"], f"{path} (params)")
    # the saved weights replace everything: no need for the ImageNet file again
    p = dataclasses.replace(p, pretrained=False, pretrained_path="")
    model = build_model(tuple(checkpoint["shape"]), len(checkpoint["classes"]), p)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint




def check_classes(classes: list[str], checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a model (``checkpoint``, read from ``path``) whose classes are not the prepared ones."""
    if classes != checkpoint["classes"]:
        raise UserError(f"{path} was trained on the classes {checkpoint['classes']}, but the prepared data has "
                        f"{classes}; re-run the pipeline: `dvc repro`")


def save_fold_models(folder: str | Path, weights: dict[tuple[str, int], dict[str, torch.Tensor]], p: Params,
                     classes: list[str], stats: dict[str, Any], shape: tuple[int, ...], note: str) -> None:
    """crossval's kept fold models, ``weights`` keyed by (variant, fold): ``<variant>/fold<k>.pt``
    each, and ``folds.json`` with their sha256 and ``note`` (which ones are kept and why).
    Written as a whole (an interrupted write leaves no partial folder)."""
    record: dict[str, Any] = {"fold_models": p.fold_models, "note": note, "variants": {}}
    with atomic_dir(folder) as tmp:
        for (variant, fold), state in sorted(weights.items(), key=lambda item: (p.compared.index(item[0][0]),
                                                                                  item[0][1])):
            name = f"{variant}/fold{fold}.pt"
            data = _model_bytes(state, p, variant, classes, stats, shape)
            (tmp / variant).mkdir(exist_ok=True)
            (tmp / name).write_bytes(data)
            record["variants"].setdefault(variant, []).append(
                {"fold": fold, "file": name, "sha256": hashlib.sha256(data).hexdigest()})
        (tmp / FOLDS_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_fold_record(folder: str | Path) -> dict[str, Any]:
    """``folds.json`` of a fold-models folder; a ``UserError`` naming the fix when it is missing or bad."""
    path = Path(folder) / FOLDS_RECORD
    try:
        record = json.loads(path.read_text())
        record["variants"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not crossval's record of its fold models ({exc}); "
                        f"run crossval again: `dvc repro -f -s crossval`") from None
    return record


def load_fold_models(folder: str | Path, variant: str, device: torch.device,
                     final: dict[str, Any]) -> list[nn.Module]:
    """The K fold models crossval kept of ``variant``, each checked against its recorded sha256,
    in eval mode on ``device``; [] when it kept none of that variant (see ``folds.json``'s note).
    ``final`` is the final model's checkpoint: fold models of other classes, stats or image
    shape (outputs of different runs put side by side) are refused."""
    record = read_fold_record(folder)
    where = str(Path(folder) / FOLDS_RECORD)
    models = []
    for entry in record["variants"].get(variant, []):
        path = Path(folder) / entry["file"]
        model, checkpoint = load_checkpoint(path, device, entry["sha256"], where, "crossval")
        for key in ("classes", "stats", "shape"):
            if checkpoint[key] != final[key]:
                raise UserError(f"{path} was trained with other {key} than the final model "
                                f"({checkpoint[key]!r} vs {final[key]!r}); re-run the pipeline: `dvc repro`")
        models.append(model)
    return models

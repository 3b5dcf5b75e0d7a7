"""The predictor users run: exactly the model evaluate used, with everything needed to feed it.

evaluate chooses between the final model and crossval's K fold models, optionally adds test-time
flips and fits a temperature on the valid split. ``save_predictor`` writes that very predictor to
one folder (``models/predictor/``): the members' weights, the flips, the temperature, the classes,
the normalisation statistics and how a new image is decoded, converted and resized (prepare's own
functions, ``data.images``). Its sha256 is recorded beside it and checked on loading, as for the
model files. ``Predictor.log_probs`` is evaluate's own arithmetic, so a prepared test image gets
evaluate's prediction and calibrated probability.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldwise.core.errors import UserError
from foldwise.core.outputs import atomic_dir
from foldwise.core.params import parse_params
from foldwise.data.batches import Preloaded
from foldwise.data.images import BACKGROUND, Size
from foldwise.data.normalize import to_inputs
from foldwise.reporting.calibration import scale
from foldwise.training.ensemble import log_probabilities
from foldwise.training.models import build_model

FILE = "predictor.pt"  # weights and everything else, one torch file (weights_only-loadable)
RECORD = "predictor.json"  # its sha256, and a readable summary of what it is
CARD = "MODEL_CARD.md"
FORMAT = "foldwise-predictor/1"


def input_size(image_size: Size | list[int], shape: tuple[int, ...]) -> Size:
    """What a new image is resized to: prepare's ``image_size`` when it resized (an int: shorter side
    then centre crop; [h, w]: exactly), else the model's own H x W (square: shorter side then crop,
    keeping the aspect ratio as prepare would have)."""
    if image_size:
        return image_size if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    height, width = shape[1], shape[2]
    return height if height == width else (height, width)


@dataclass
class Predictor:
    """The members evaluate used (eval mode, one device), their flips and temperature, the classes,
    the train split's stats and the input: ``shape`` C x H x W, ``size`` what ``decode`` resizes to."""

    members: list[nn.Module]
    flip: bool
    temperature: float
    classes: list[str]
    stats: dict[str, Any]
    shape: tuple[int, int, int]
    size: Size
    used: str
    params: dict[str, Any]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated log-probabilities (float64, CPU) of uint8 N x C x H x W images: evaluate's
        ``log_probabilities`` and ``scale``, the same arithmetic on the same normalised inputs."""
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images are {tuple(images.shape[1:])}, the predictor takes {self.shape} (C x H x W)")
        # standard strides, as evaluate's: a channel-last view of one channel counts as contiguous, and
        # convolutions on its strides round differently (probabilities 1e-6 apart)
        images = torch.empty(images.shape, dtype=images.dtype).copy_(images)
        inputs = Preloaded(to_inputs(images, self.stats, self.device))
        with torch.inference_mode():
            return scale(log_probabilities(self.members, inputs, self.flip), self.temperature)

    def summary(self) -> dict[str, Any]:
        """What the predictor is, in plain JSON: recorded beside it and in the model card."""
        c, h, w = self.shape
        return {"used": self.used, "members": len(self.members), "test_time_flips": self.flip,
                "temperature": self.temperature, "classes": self.classes,
                "input": {"channels": c, "height": h, "width": w, "size": self.size,
                          "resize": (f"shorter side to {self.size}, then centre crop {self.size}x{self.size}"
                                     if isinstance(self.size, int) else f"stretched to exactly {h}x{w}"),
                          "colour": "greyscale (L)" if c == 1 else "RGB",
                          "transparency": f"composited onto RGB {list(BACKGROUND)}",
                          "mean": self.stats["mean"], "std": self.stats["std"]}}


def _payload(members: list[nn.Module], flip: bool, temperature: float, used: str, final: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()}
                                              for m in members],
                "params": final["params"], "classes": final["classes"], "stats": final["stats"],
                "shape": list(final["shape"]), "flip": flip, "temperature": temperature, "used": used}, buffer)
    return buffer.getvalue()


def save_predictor(folder: str | Path, members: list[nn.Module], flip: bool, temperature: float, used: str,
                   final: dict[str, Any], card: Callable[[dict[str, Any]], str] | None = None) -> Predictor:
    """Write the predictor evaluate used (``members``: the final model or the fold models; ``final``:
    the final model's checkpoint, for params, classes, stats and shape) to ``folder`` as a whole:
    ``predictor.pt``, ``predictor.json`` (sha256 and summary) and the model card, ``card(summary)``."""
    data = _payload(members, flip, temperature, used, final)
    predictor = _build(torch.load(io.BytesIO(data), weights_only=True), torch.device("cpu"))
    record = {"format": FORMAT, "file": FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
              **predictor.summary()}
    with atomic_dir(folder) as tmp:
        (tmp / FILE).write_bytes(data)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if card is not None:
            (tmp / CARD).write_text(card(predictor.summary()))
    return predictor


def _build(saved: dict[str, Any], device: torch.device) -> Predictor:
    p = parse_params(saved["params"], "predictor params")
    p = dataclasses.replace(p, pretrained=False, pretrained_path="")  # the saved weights replace ImageNet's
    shape = tuple(saved["shape"])
    members = []
    for state in saved["members"]:
        model = build_model(shape, len(saved["classes"]), p)
        model.load_state_dict(state)
        members.append(model.to(device).eval())
    return Predictor(members, bool(saved["flip"]), float(saved["temperature"]), list(saved["classes"]),
                     saved["stats"], shape, input_size(p.image_size, shape), str(saved["used"]), saved["params"])


def cause(exc: BaseException) -> str:
    """``Type: first line of its message`` (``no detail`` when it has none, terminal colour codes
    removed): why torch or onnxruntime refused a file, in the one line a ``UserError`` has room for."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip() if lines else 'no detail'}"


def _fix(folder: Path) -> str:
    return (f"restore it with `dvc checkout {folder}` (or `dvc pull {folder}`), or write it again: "
            f"`dvc repro evaluate`")


def load_predictor(folder: str | Path, device: torch.device | None = None) -> Predictor:
    """The predictor saved in ``folder``, checked against its recorded sha256, on ``device`` (CPU by
    default). A missing, damaged or foreign folder is a one-line ``UserError`` naming the file and the fix."""
    folder = Path(folder)
    record_path, path = folder / RECORD, folder / FILE
    if not folder.is_dir():
        raise UserError(f"{folder}: no predictor there (not a folder); {_fix(folder)}")
    try:
        record = json.loads(record_path.read_text())
        sha256 = record["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{record_path}: not a foldwise predictor record ({type(exc).__name__}: {exc}); "
                        f"{_fix(folder)}") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); {_fix(folder)}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise UserError(f"{path} is damaged: its sha256 is {actual}, but {record_path} records {sha256}; "
                        f"{_fix(folder)}")
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if saved.get("format") != FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, this foldwise reads {FORMAT!r}")
        return _build(saved, device or torch.device("cpu"))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; the message names the file
        raise UserError(f"{path} is not a usable foldwise predictor ({cause(exc)}); {_fix(folder)}") from None

"""The whole predictor as one ONNX graph, its parity check with onnxruntime, and running it.

The graph takes uint8 N x C x H x W images (decoded, converted and resized as the model card
says) and returns calibrated probabilities: normalisation, every member, the test-time flips, the
mean of their softmax outputs and the temperature are all inside, so nothing from foldwise is
needed to use it. The classes and the preprocessing are in the file's metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.core.errors import UserError
from foldwise.core.outputs import atomic_file
from foldwise.data.normalize import normalize, stats_tensors
from foldwise.inference.predictor import Predictor, cause
from foldwise.training.ensemble import MeanSoftmax

INPUT, OUTPUT = "images", "probabilities"
OPSET = 18
TOLERANCE = 1e-4  # the largest |probability difference| the check accepts, on any image and class
META = "foldwise"  # metadata key: the predictor's summary, as JSON


class Exported(nn.Module):
    """The predictor as one module: uint8 images in, calibrated probabilities (float32) out."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.ensemble = MeanSoftmax(predictor.members, predictor.flip)
        mean, std = stats_tensors(predictor.stats, predictor.device)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.temperature = predictor.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.ensemble(normalize(images, self.mean, self.std)) / self.temperature, dim=1)


def export_onnx(predictor: Predictor, path: str | Path, model_name: str = "") -> None:
    """Write ``predictor`` to ``path`` as ONNX (any batch size); a ``UserError`` naming the model
    (``model_name``) when torch's exporter cannot translate it."""
    module = Exported(predictor).cpu().eval()
    example = torch.zeros((2, *predictor.shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            program = torch.onnx.export(module, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; one line names the model
        raise UserError(f"model {model_name or type(predictor.members[0]).__name__!r} cannot be exported to ONNX "
                        f"({cause(exc)}); foldwise predict still runs it with torch") from None
    import onnx

    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = META, json.dumps(predictor.summary())
    with atomic_file(path) as tmp:
        onnx.save_model(model, str(tmp))


def open_session(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An onnxruntime session of an exported predictor and its summary (classes, input, temperature);
    a one-line ``UserError`` naming the file when it is missing or not one of ours."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"{path} is missing; write it with `dvc repro export` (or `dvc pull {path}`)")
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=_providers(ort))
        summary = json.loads(session.get_modelmeta().custom_metadata_map[META])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are its own classes
        raise UserError(f"{path} is not a foldwise ONNX predictor ({cause(exc)}); "
                        f"write it again with `dvc repro -f -s export`") from None
    return session, summary


def _providers(ort: Any) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnx_log_probs(session: Any, images: torch.Tensor) -> torch.Tensor:
    """Calibrated log-probabilities (float64) of uint8 N x C x H x W images, from an ONNX session."""
    probs = session.run([OUTPUT], {INPUT: images.numpy()})[0]
    return torch.from_numpy(probs.astype(np.float64)).clamp_min(1e-300).log()


def check_parity(session: Any, predictor: Predictor, chunks: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Run the ONNX graph and the torch predictor on the same uint8 image chunks: images compared,
    how many argmaxes agree, the largest absolute probability difference, and whether it passes
    (every argmax agrees and the difference is at most ``TOLERANCE``)."""
    images = agree = 0
    worst = 0.0
    for chunk in chunks:
        expected = predictor.log_probs(chunk).exp()
        got = torch.from_numpy(session.run([OUTPUT], {INPUT: chunk.numpy()})[0]).double()
        images += len(chunk)
        agree += int((expected.argmax(1) == got.argmax(1)).sum())
        worst = max(worst, float((expected - got).abs().max()))
    return {"images": images, "argmax_agree": agree, "max_abs_probability_difference": float(f"{worst:.3g}"),
            "tolerance": TOLERANCE, "passed": agree == images and worst <= TOLERANCE}

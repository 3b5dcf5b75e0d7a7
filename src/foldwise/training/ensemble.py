"""evaluate's models: the final model, crossval's K-fold ensemble, test-time flips, temperature scaling.

The K fold models of the final model's variant cost no extra training. Their
ensemble (the mean of their softmax outputs) is measured beside the single
final model on the same test images, and McNemar's exact test says whether
the difference is more than luck. ``ensemble: auto`` keeps the single model
unless the ensemble is significantly (p < ``significance.ALPHA``) more accurate.
With ``tta``, every model also sees each image mirrored (where ``augment_flip``
allows it) and the softmax outputs are averaged. The model used is then
temperature-scaled on the valid split (never the test set), and its calibrated
probabilities are what predictions.csv and the galleries show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.core.errors import UserError
from foldwise.data.batches import BatchSource
from foldwise.reporting.calibration import expected_calibration_error, fit_temperature, nll, reliability, scale
from foldwise.reporting.metrics import classification_metrics
from foldwise.reporting.significance import ALPHA, compare_paired
from foldwise.training.engine import predict

TINY = 1e-30  # floor of an averaged probability before its log (float32 softmax can underflow to 0)


class MeanSoftmax(nn.Module):
    """The log of the mean softmax output of ``members`` (each also on the mirrored images with
    ``flip``): one model whose "logits" are normalised log-probabilities."""

    def __init__(self, members: list[nn.Module], flip: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = (x, x.flip(-1)) if self.flip else (x,)
        probs = torch.stack([F.softmax(m(v).float(), dim=1) for m in self.members for v in views]).mean(0)
        return probs.clamp_min(TINY).log()


def log_probabilities(members: list[nn.Module], data: BatchSource, flip: bool = False) -> torch.Tensor:
    """Per image of ``data``, the log of the members' mean softmax output: float64, on the CPU."""
    return F.log_softmax(predict(MeanSoftmax(members, flip), data).double().cpu(), dim=1)


def score(log_probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1, NLL (nats per image) and ECE of one predictor's log-probabilities."""
    predicted = log_probs.argmax(1)
    metrics = classification_metrics(labels.numpy(), predicted.numpy(), classes)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "nll": round(nll(log_probs, labels), 6),
            "ece": round(expected_calibration_error(log_probs.exp(), labels), 6)}


@dataclass
class Assessment:
    """What evaluate measured and chose. ``rows``: one per predictor (name, accuracy, macro_f1, nll,
    ece), the model used last, temperature-scaled; ``used``: e.g. ``ensemble+tta``; ``why``: one
    sentence; ``metrics``: the used model's classification metrics; ``predictions``: per test image
    index, actual, predicted and calibrated_confidence; ``reliability``: the ECE bins before and after;
    ``members`` and ``flip``: the model used (the final model or the fold models, mirrored or not)."""

    used: str
    why: str
    rows: list[dict[str, Any]]
    paired: dict[str, Any] | None  # McNemar: single (first) vs ensemble (second)
    temperature: float
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    reliability: pd.DataFrame
    notes: list[str]
    members: list[nn.Module]
    flip: bool


def _choose(choice: bool | str, fold_models: list[nn.Module], paired: dict[str, Any] | None,
            rows: dict[str, dict[str, Any]], fold_note: str) -> tuple[bool, str]:
    """Whether the ensemble is the model used, and why (one sentence)."""
    if not fold_models:
        if choice is True:
            raise UserError(f"ensemble: true, but there are no fold models of the final model's variant "
                            f"({fold_note}); valid: set fold_models to chosen or all (crossval keeps them), "
                            f"or ensemble to auto or false")
        return False, f"the single model: there is no fold ensemble ({fold_note})"
    if choice is not True and choice is not False:  # auto
        gain = rows["ensemble"]["accuracy"] - rows["single"]["accuracy"]
        p = paired["p_value"]  # assess pairs the two whenever there are fold models
        better = gain > 0 and p < ALPHA
        verdict = "significantly" if better else "not significantly"
        return better, (f"the {'ensemble' if better else 'single model'} (ensemble: auto): the ensemble is "
                        f"{verdict} more accurate ({100 * gain:+.2f} points, McNemar p = {p:.3g}; "
                        f"threshold {ALPHA})")
    used = "ensemble" if choice else "single model"
    return bool(choice), f"the {used}: ensemble: {str(choice).lower()} in params.yaml"


def assess(single: nn.Module, fold_models: list[nn.Module], test: BatchSource, valid: BatchSource, classes: list[str],
           choice: bool | str, tta: bool, flip_allowed: bool, fold_note: str = "") -> Assessment:
    """Measure the single final model and the fold ensemble on ``test``, choose (``choice``: the
    ``ensemble`` param), apply test-time flips (``tta`` and ``flip_allowed``), fit the temperature
    on ``valid`` and return everything evaluate writes. Both splits are normalised as the models
    were trained."""
    y = test.labels.cpu()
    notes = []
    flip = tta and flip_allowed
    if tta and not flip_allowed:
        notes.append("tta: true, but mirrored images change class in this dataset (augment_flip): no test-time "
                     "flips")
    predictors = {"single": [single], **({"ensemble": fold_models} if fold_models else {})}
    test_lp = {name: log_probabilities(members, test) for name, members in predictors.items()}
    rows = {name: score(lp, y, classes) for name, lp in test_lp.items()}
    paired = (compare_paired(y.numpy(), test_lp["single"].argmax(1).numpy(), test_lp["ensemble"].argmax(1).numpy())
              if fold_models else None)
    use_ensemble, why = _choose(choice, fold_models, paired, rows, fold_note)
    used = "ensemble" if use_ensemble else "single"
    members = predictors[used]
    if flip:
        for name, m in predictors.items():
            test_lp[f"{name}+tta"] = log_probabilities(m, test, flip=True)
            rows[f"{name}+tta"] = score(test_lp[f"{name}+tta"], y, classes)
        used += "+tta"
    # rounded before use: the temperature recorded (comparison.json, the predictor) is the one applied
    temperature = round(fit_temperature(log_probabilities(members, valid, flip), valid.labels.cpu()), 6)
    calibrated = scale(test_lp[used], temperature)
    rows[f"{used}, T={temperature:.3f}"] = score(calibrated, y, classes)
    table = [{"name": name, **row} for name, row in rows.items()]
    predicted = calibrated.argmax(1)
    names = pd.Series(classes)
    predictions = pd.DataFrame({"index": range(len(y)), "actual": names[y.numpy()].to_numpy(),
                                "predicted": names[predicted.numpy()].to_numpy(),
                                "calibrated_confidence": calibrated.max(1).values.exp().numpy().round(6)})
    bins = pd.concat([reliability(test_lp[used].exp(), y).assign(probabilities="uncalibrated"),
                      reliability(calibrated.exp(), y).assign(probabilities="calibrated")])
    metrics = classification_metrics(y.numpy(), predicted.numpy(), classes)
    return Assessment(used, why, table, paired, temperature, metrics, predictions, bins.round(6), notes, members, flip)

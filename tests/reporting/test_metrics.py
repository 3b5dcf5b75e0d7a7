import numpy as np
import pytest
import torch

from foldwise.core.params import Params
from foldwise.reporting.metrics import classification_metrics, provenance


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3, abs=1e-6), "recall": 1.0,
                                   "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["precision"] == 1.0 and m["per_class"]["c"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]), abs=1e-6)


def test_provenance_records_what_made_the_result():
    record = provenance(Params(), "l2", torch.device("cpu"))
    assert record["variant"] == "l2" and record["device"] == "cpu" and record["seed"] == 42
    assert record["torch"] == torch.__version__


def test_a_class_never_seen_counts_zero_and_values_keep_six_places():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "never"])
    assert m["accuracy"] == 0.833333
    assert m["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["b"] == {"precision": 0.666667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 2}
    assert m["macro_f1"] == 0.616667  # four classes: the unseen one counts as 0
    third = classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1]), ["a", "b"])
    assert third["per_class"]["a"]["recall"] == 0.333333 and third["per_class"]["b"]["precision"] == 0.333333


def test_provenance_is_exactly_what_made_the_result():
    import platform

    import torchvision

    p = Params()
    assert provenance(p, "l2", torch.device("cpu")) == {
        "dataset": p.dataset, "model": p.model, "variant": "l2", "seed": p.seed, "device": "cpu",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def _row(name: str, accuracy: float, ece: float) -> dict:
    return {"name": name, "accuracy": accuracy, "macro_f1": accuracy - 0.01, "nll": 1 - accuracy, "ece": ece}


def test_headline_metrics_are_the_single_model_the_ensemble_tta_and_the_used_models_calibration():
    """evaluate's metrics.json, pinned key by key: the single model under ``test`` whatever is used,
    the ensemble with McNemar's p, tta when the used predictor has flips, and the used predictor's ECE
    before and after temperature scaling (the last row)."""
    from foldwise.reporting.metrics import headline_metrics

    rows = [_row("single", 0.90, 0.05), _row("ensemble", 0.92, 0.04), _row("ensemble+tta", 0.93, 0.03),
            _row("ensemble+tta, T=0.800", 0.93, 0.01)]
    assert headline_metrics(rows, "ensemble+tta", {"p_value": 0.02}) == {
        "test": {"loss": pytest.approx(0.10), "accuracy": 0.90, "macro_f1": pytest.approx(0.89)},
        "ensemble": {"accuracy": 0.92, "mcnemar_p": 0.02},
        "tta": {"accuracy": 0.93},
        "calibration": {"ece_before": 0.03, "ece": 0.01}}
    # the single model used, no flips: no tta entry; an ensemble without a paired test reads p = 1
    rows = [_row("single", 0.90, 0.05), _row("ensemble", 0.91, 0.04), _row("single, T=1.100", 0.90, 0.02)]
    assert headline_metrics(rows, "single", None) == {
        "test": {"loss": pytest.approx(0.10), "accuracy": 0.90, "macro_f1": pytest.approx(0.89)},
        "ensemble": {"accuracy": 0.91, "mcnemar_p": 1.0},
        "calibration": {"ece_before": 0.05, "ece": 0.02}}
    # one model (no fold models kept): neither ensemble nor tta
    rows = [_row("single", 0.90, 0.05), _row("single, T=1.100", 0.90, 0.02)]
    assert headline_metrics(rows, "single", None) == {
        "test": {"loss": pytest.approx(0.10), "accuracy": 0.90, "macro_f1": pytest.approx(0.89)},
        "calibration": {"ece_before": 0.05, "ece": 0.02}}


def test_torchvisions_version_is_read_without_importing_it(monkeypatch, tmp_path):
    """evaluate's provenance: importing torchvision would cost each evaluate run about a second."""
    import importlib.metadata
    import importlib.util
    import subprocess
    import sys
    from types import SimpleNamespace

    import torchvision

    script = ("import sys; from foldwise.reporting.metrics import torchvision_version; "
              "print(torchvision_version(), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == [torchvision.__version__, "False"]
    # a torchvision without version.py: the package metadata's version (no build tag)
    from foldwise.reporting import metrics

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=str(tmp_path / "x.py")))
    assert metrics.torchvision_version() == importlib.metadata.version("torchvision")

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

import dataclasses

import pytest
import torch

from foldwise.core.errors import UserError
from foldwise.reporting.calibration import fit_temperature
from foldwise.training.engine import predict
from foldwise.training.ensemble import assess, log_probabilities
from foldwise.training.final import train_final
from foldwise.training.models import build_model
from tests.conftest import train_valid


@pytest.fixture
def trained(tiny_set, tiny_stats, tiny_params):
    """Two differently seeded trained models, an untrained one, and the train / valid sources."""
    train, valid = train_valid(tiny_set, tiny_stats)
    p = dataclasses.replace(tiny_params, epochs=4)
    models = [train_final(train, valid, 3, dataclasses.replace(p, seed=s), "baseline")[0].eval() for s in (1, 2)]
    torch.manual_seed(5)
    untrained = build_model((1, 12, 12), 3, p).eval()
    return models, untrained, train, valid


def test_the_ensemble_of_k_identical_models_is_that_model(trained, tiny_set):
    (model, _), _, train, valid = trained
    one = log_probabilities([model], valid)
    assert torch.allclose(one.exp(), torch.softmax(predict(model, valid).double(), 1), atol=1e-6)
    assert torch.allclose(log_probabilities([model] * 5, valid), one, atol=1e-6)
    result = assess(model, [model] * 5, valid, train, tiny_set.classes, "auto", False, True)
    single, ensemble = result.rows[0], result.rows[1]
    assert {k: v for k, v in single.items() if k != "name"} == {k: v for k, v in ensemble.items() if k != "name"}
    assert result.paired == {"only_first": 0, "only_second": 0, "p_value": 1.0}
    assert result.used == "single" and "not significantly" in result.why


def test_the_ensemble_is_the_mean_of_its_members_softmax(trained):
    (a, b), _, _, valid = trained
    mean = (torch.softmax(predict(a, valid).double(), 1) + torch.softmax(predict(b, valid).double(), 1)) / 2
    assert torch.allclose(log_probabilities([a, b], valid).exp(), mean, atol=1e-6)
    flips = [torch.softmax(predict(m, type(valid)(valid.x.flip(-1), valid.labels)).double(), 1) for m in (a, b)]
    with_tta = (2 * mean + flips[0] + flips[1]) / 4
    assert torch.allclose(log_probabilities([a, b], valid, flip=True).exp(), with_tta, atol=1e-6)


def test_auto_uses_the_ensemble_only_when_it_is_significantly_better(trained, tiny_set):
    (a, b), untrained, train, valid = trained
    result = assess(untrained, [a, b], valid, train, tiny_set.classes, "auto", False, True)
    assert result.rows[1]["accuracy"] - result.rows[0]["accuracy"] > 0.3
    assert result.paired["p_value"] < 0.05 and result.used == "ensemble"
    assert result.why.startswith("the ensemble (ensemble: auto): the ensemble is significantly more accurate")
    pinned = assess(untrained, [a, b], valid, train, tiny_set.classes, False, False, True)
    assert pinned.used == "single" and pinned.why == "the single model: ensemble: false in params.yaml"
    assert assess(a, [untrained], valid, train, tiny_set.classes, True, False, True).used == "ensemble"
    worse = assess(a, [untrained], valid, train, tiny_set.classes, "auto", False, True)
    assert worse.used == "single" and "not significantly" in worse.why


def test_predictions_carry_the_calibrated_probabilities_of_the_model_used(trained, tiny_set):
    (a, b), _, train, valid = trained
    result = assess(a, [a, b], valid, train, tiny_set.classes, False, False, True)
    assert list(result.predictions.columns) == ["index", "actual", "predicted", "calibrated_confidence"]
    logits = predict(a, valid).double()
    assert list(result.predictions["predicted"]) == [tiny_set.classes[i] for i in logits.argmax(1)]
    calibrated = torch.softmax(logits / result.temperature, 1).max(1).values
    assert torch.allclose(torch.tensor(result.predictions["calibrated_confidence"].to_numpy()), calibrated, atol=1e-4)
    # fitted on the split given as valid (train here), never on the test images
    assert result.temperature == round(fit_temperature(log_probabilities([a], train), train.labels), 6)
    assert result.temperature != round(fit_temperature(log_probabilities([a], valid), valid.labels), 6)
    assert result.rows[-1]["name"] == f"single, T={result.temperature:.3f}"
    assert result.rows[-1]["accuracy"] == result.rows[0]["accuracy"]  # scaling never changes a prediction
    assert set(result.reliability["probabilities"]) == {"uncalibrated", "calibrated"}
    assert list(result.metrics["per_class"]) == tiny_set.classes


def test_tta_adds_flipped_rows_where_flips_are_allowed_and_says_why_not_elsewhere(trained, tiny_set):
    (a, b), _, train, valid = trained
    result = assess(a, [a, b], valid, train, tiny_set.classes, "auto", True, True)
    assert [r["name"] for r in result.rows][:4] == ["single", "ensemble", "single+tta", "ensemble+tta"]
    assert result.used == "single+tta" and result.notes == []
    digits = assess(a, [a, b], valid, train, tiny_set.classes, "auto", True, False)
    assert [r["name"] for r in digits.rows][:2] == ["single", "ensemble"] and len(digits.rows) == 3
    assert digits.used == "single" and digits.notes == [
        "tta: true, but mirrored images change class in this dataset (augment_flip): no test-time flips"]


def test_no_fold_models_keeps_the_single_model_or_names_the_fix(trained, tiny_set):
    (a, _), _, train, valid = trained
    result = assess(a, [], valid, train, tiny_set.classes, "auto", False, True, "fold_models: none")
    assert result.used == "single" and result.paired is None and len(result.rows) == 2
    assert result.why == "the single model: there is no fold ensemble (fold_models: none)"
    with pytest.raises(UserError, match=r"ensemble: true, but there are no fold models .*\(fold_models: none\); "
                                        r"valid: set fold_models to chosen or all"):
        assess(a, [], valid, train, tiny_set.classes, True, False, True, "fold_models: none")


def test_auto_keeps_the_single_model_when_the_ensemble_is_more_accurate_but_not_significantly():
    """3 images right only for the ensemble, none only for the single model: +3 points, but McNemar's
    exact p is 0.25, so ``auto`` keeps the single model and says why with the numbers."""
    import numpy as np

    from foldwise.reporting.significance import compare_paired
    from foldwise.training.ensemble import _choose

    labels = np.zeros(100, dtype=np.int64)
    single = np.where(np.arange(100) < 80, 0, 1)  # 80 right
    ensemble = np.where(np.arange(100) < 83, 0, 1)  # 83 right: the single model's 80 and 3 more
    paired = compare_paired(labels, single, ensemble)
    assert paired == {"only_first": 0, "only_second": 3, "p_value": 0.25}
    rows = {"single": {"accuracy": 0.80}, "ensemble": {"accuracy": 0.83}}
    used, why = _choose("auto", [torch.nn.Identity()], paired, rows, "")
    assert used is False
    assert why == ("the single model (ensemble: auto): the ensemble is not significantly more accurate "
                   "(+3.00 points, McNemar p = 0.25; threshold 0.05)")
    assert _choose(True, [torch.nn.Identity()], paired, rows, "")[0] is True  # pinned: used regardless


def test_explicit_choices_and_the_threshold_are_said_word_for_word():
    """``ensemble: true`` / ``false`` name themselves; ``auto`` needs p strictly below ALPHA."""
    from torch import nn

    from foldwise.training.ensemble import _choose

    members = [nn.Identity()]
    rows = {"single": {"accuracy": 0.80}, "ensemble": {"accuracy": 0.83}}
    assert _choose(True, members, {"p_value": 0.9}, rows, "") == (True, "the ensemble: ensemble: true in params.yaml")
    assert _choose(False, members, {"p_value": 0.01}, rows, "") == (
        False, "the single model: ensemble: false in params.yaml")
    assert _choose("auto", members, {"p_value": 0.05}, rows, "") == (
        False, "the single model (ensemble: auto): the ensemble is not significantly more accurate "
               "(+3.00 points, McNemar p = 0.05; threshold 0.05)")
    assert _choose("auto", members, {"p_value": 0.0499}, rows, "")[0] is True


def test_scores_are_named_and_rounded_to_six_places():
    from foldwise.reporting.calibration import expected_calibration_error, nll
    from foldwise.training.ensemble import score

    log_probs = torch.log_softmax(torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 0.1], [0.0, 1.0, 0.5],
                                                [1.3, -0.4, 0.2]], dtype=torch.float64), 1)
    labels = torch.tensor([0, 2, 1, 1])
    result = score(log_probs, labels, ["a", "b", "c"])
    assert set(result) == {"accuracy", "macro_f1", "nll", "ece"} and result["accuracy"] == 0.5
    exact_nll, exact_ece = nll(log_probs, labels), expected_calibration_error(log_probs.exp(), labels)
    assert result["nll"] == round(exact_nll, 6) != round(exact_nll, 7)
    assert result["ece"] == round(exact_ece, 6) != round(exact_ece, 7)


def test_tta_rows_the_temperature_and_the_confidences_come_from_the_flipped_images(trained, tiny_set, tiny_params):
    import numpy as np

    from foldwise.training.ensemble import score

    (a, b), _, train, valid = trained
    # a model one short epoch in: trained ones are sure of every tiny image (every confidence 1.0),
    # an untrained one of none (its temperature runs off)
    p = dataclasses.replace(tiny_params, epochs=1, lr=0.002)
    unsure = train_final(train, valid, 3, p, "baseline")[0].eval()
    result = assess(unsure, [a, b], valid, train, tiny_set.classes, False, True, True)
    flipped, plain = log_probabilities([unsure], valid, flip=True), log_probabilities([unsure], valid)
    assert not torch.equal(flipped, plain)
    assert result.rows[2] == {"name": "single+tta", **score(flipped, valid.labels, tiny_set.classes)}
    fitted = fit_temperature(log_probabilities([unsure], train, flip=True), train.labels)
    assert result.temperature == round(fitted, 6) != round(fitted, 7)
    assert result.temperature != round(fit_temperature(log_probabilities([unsure], train), train.labels), 6)
    confidence = result.predictions["calibrated_confidence"].to_numpy()
    assert np.array_equal(confidence, confidence.round(6)) and not np.array_equal(confidence, confidence.round(5))
    bins = result.reliability[["confidence", "accuracy"]].dropna().to_numpy()
    assert np.array_equal(bins, bins.round(6)) and not np.array_equal(bins, bins.round(5))

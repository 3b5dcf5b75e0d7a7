import numpy as np
import pytest
import torch

from foldwise.reporting.calibration import expected_calibration_error, fit_temperature, nll, reliability, scale


def test_a_perfectly_calibrated_predictor_has_an_ece_near_zero_and_an_overconfident_one_a_large_ece():
    rng = np.random.default_rng(0)
    n = 200_000
    confidence = rng.uniform(0.5, 1.0, n)
    probs = torch.from_numpy(np.stack([confidence, 1 - confidence], 1))
    calibrated = torch.from_numpy((rng.uniform(size=n) >= confidence).astype(np.int64))  # right w.p. confidence
    assert expected_calibration_error(probs, calibrated) < 0.005
    over = torch.from_numpy(np.stack([np.full(n, 0.99), np.full(n, 0.01)], 1))
    right_70 = torch.from_numpy((rng.uniform(size=n) >= 0.7).astype(np.int64))  # 99% sure, 70% right
    assert expected_calibration_error(over, right_70) == pytest.approx(0.29, abs=0.005)


def test_reliability_bins_are_right_closed_with_15_equal_widths():
    probs = torch.tensor([[1 / 15, 1 - 1 / 15], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]], dtype=torch.float64)
    table = reliability(probs, torch.tensor([1, 0, 0, 0]))
    assert len(table) == 15 and table["upper"].iloc[-1] == 1.0
    assert table["count"].sum() == 4
    # 14/15 falls in the bin (13/15, 14/15]; 0.5 in (7/15, 8/15]; 1.0 in the last; 0.8 in (11/15, 12/15]
    assert list(table.index[table["count"] > 0]) == [7, 11, 13, 14]
    assert table.loc[11, "accuracy"] == 0.0 and table.loc[13, "accuracy"] == 1.0
    assert table["confidence"].isna().sum() == 11


def test_temperature_scaling_never_changes_the_argmax_and_lowers_the_nll_of_an_overconfident_model():
    torch.manual_seed(0)
    truth = torch.randn(5000, 10) * 2
    labels = torch.multinomial(torch.softmax(truth, 1), 1)[:, 0]  # the world draws from softmax(truth)
    log_probs = torch.log_softmax(truth.double() * 3, 1)  # the model: three times too sure of itself
    t = fit_temperature(log_probs, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = scale(log_probs, t)
    assert torch.equal(scaled.argmax(1), log_probs.argmax(1))
    assert nll(scaled, labels) < nll(log_probs, labels)
    assert expected_calibration_error(scaled.exp(), labels) < expected_calibration_error(log_probs.exp(), labels)
    for other in (0.05, 0.5, 3.0, 40.0):  # argmax is unchanged at any temperature
        assert torch.equal(scale(log_probs, other).argmax(1), log_probs.argmax(1))
    # T is the minimum of the NLL: nudging it either way costs
    assert nll(scale(log_probs, t * 1.05), labels) > nll(scaled, labels) < nll(scale(log_probs, t / 1.05), labels)


def test_temperature_of_a_calibrated_model_stays_near_one():
    torch.manual_seed(1)
    logits = torch.randn(20_000, 5) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1)[:, 0]  # labels drawn from the model itself
    assert fit_temperature(torch.log_softmax(logits.double(), 1), labels) == pytest.approx(1.0, abs=0.05)


def test_ece_weighs_each_bin_by_its_share_of_the_images():
    # 9 images 95% sure and right (gap 0.05), 1 image 55% sure and wrong (gap 0.55): (9 x 0.05 + 0.55) / 10
    probs = torch.tensor([[0.95, 0.05]] * 9 + [[0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0] * 9 + [1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1)


def test_the_ece_uses_the_bins_it_is_given_and_weighs_images_not_bins():
    """Confidences 0.6 (right) and 0.9 (wrong): five bins keep them apart (|1 - 0.6| and |0 - 0.9|,
    mean 0.65), one bin pools them (|0.5 - 0.75| = 0.25); one image alone is its own gap."""
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.65)
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.25)
    assert expected_calibration_error(probs[:1], labels[:1]) == pytest.approx(0.4)


def test_bin_edges_are_exact_in_float64():
    """0.6 is the upper edge of bin 8, (8/15, 9/15]: it stays there, and 0.6 + 1e-8 goes to bin 9.
    float32 edges (9/15 is 0.59999996 there) would put both in bin 9."""
    probs = torch.tensor([[0.6 + 1e-8, 0.4 - 1e-8], [0.6, 0.4]], dtype=torch.float64)
    table = reliability(probs, torch.tensor([0, 0]))
    assert table.loc[table["count"] > 0, "bin"].tolist() == [8, 9]


def test_the_reliability_table_has_named_bounds_and_integer_counts():
    table = reliability(torch.tensor([[0.3, 0.7], [0.9, 0.1]], dtype=torch.float64), torch.tensor([1, 1]), bins=4)
    assert list(table.columns[:3]) == ["bin", "lower", "upper"] and "count" in table.columns
    assert table["lower"].tolist() == [0.0, 0.25, 0.5, 0.75] and table["upper"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert table["count"].dtype.kind == "i" and table["count"].tolist() == [0, 0, 1, 1]

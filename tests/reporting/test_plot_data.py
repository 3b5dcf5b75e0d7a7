import numpy as np
import pandas as pd

from foldwise.reporting.plot_data import (
    GALLERY,
    MAX_PREDICTION_ROWS,
    confident_mistakes,
    confusion,
    confusion_counts,
    counts_matrix,
    curve_families,
    per_class,
    pick_examples,
    read_table,
    sample_predictions,
)

CLASSES = ["cat", "dog", "fox"]


def predictions(n, seed=0):
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.2, rng.integers(0, 3, n), actual)
    names = np.array(CLASSES)
    return pd.DataFrame({"index": np.arange(n), "actual": names[actual], "predicted": names[predicted],
                         "calibrated_confidence": rng.uniform(0.34, 1.0, n).round(4)})


def test_ten_thousand_predictions_are_kept_whole():
    frame = predictions(10_000)
    assert sample_predictions(frame, seed=1) is frame


def test_a_million_predictions_are_sampled_to_the_bound_keeping_the_gallery():
    frame = predictions(1_000_000)
    sample = sample_predictions(frame, seed=1)
    assert len(sample) == MAX_PREDICTION_ROWS
    assert sample["index"].is_monotonic_increasing and sample["index"].is_unique
    assert set(confident_mistakes(frame)["index"]) <= set(sample["index"])
    shares = sample["actual"].value_counts(normalize=True)
    assert np.allclose(shares.sort_index(), frame["actual"].value_counts(normalize=True).sort_index(), atol=0.01)
    assert sample.equals(sample_predictions(frame, seed=1))  # seeded: the same rows every run
    assert len(sample.to_csv(index=False)) < 1_000_000  # well under a megabyte for git and the browser


def test_confident_mistakes_are_wrong_and_most_confident_first():
    frame = predictions(500)
    mistakes = confident_mistakes(frame)
    assert len(mistakes) == GALLERY and (mistakes["actual"] != mistakes["predicted"]).all()
    wrong = frame[frame["actual"] != frame["predicted"]]
    assert mistakes["calibrated_confidence"].min() >= wrong.drop(mistakes.index)["calibrated_confidence"].max()
    assert mistakes["calibrated_confidence"].is_monotonic_decreasing


def test_confusion_counts_are_exact_and_include_zeros():
    frame = predictions(1000)
    counts = confusion_counts(frame["actual"], frame["predicted"], CLASSES + ["emu"])
    assert len(counts) == 16 and counts["count"].sum() == 1000
    assert counts.query("actual == 'emu'")["count"].sum() == 0
    expected = ((frame["actual"] == "dog") & (frame["predicted"] == "cat")).sum()
    assert counts.query("actual == 'dog' and predicted == 'cat'")["count"].item() == expected
    matrix = counts_matrix(counts, CLASSES + ["emu"])
    assert matrix[1, 0] == expected and matrix.sum() == 1000 and matrix.shape == (4, 4)


def test_per_class_table_keeps_class_order():
    metrics = {"per_class": {"b": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2},
                             "a": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 1}}}
    table = per_class(metrics)
    assert list(table["class"]) == ["b", "a"] and list(table.columns) == ["class", "precision", "recall", "f1",
                                                                         "support"]


def test_curve_families_average_the_folds_per_variant():
    cv = pd.DataFrame({"variant": ["a"] * 4 + ["b"] * 2, "fold": [0, 0, 1, 1, 0, 0], "epoch": [1, 2] * 3,
                       "train_loss": [1.0, 0.5, 3.0, 1.5, 2.0, 1.0], "valid_loss": [1.0] * 6,
                       "train_acc": [0.5] * 6, "valid_acc": [0.4, 0.6, 0.6, 0.8, 0.5, 0.5]})
    final = pd.DataFrame({"variant": ["a", "a"], "epoch": [1, 2], "train_loss": [0.9, 0.4],
                          "valid_loss": [1.0, 0.8], "train_acc": [0.6, 0.7], "valid_acc": [0.5, 0.7]})
    families = curve_families(cv, final)
    assert set(families) == {"loss", "accuracy"}
    loss = families["loss"]
    assert list(loss.columns) == ["epoch", "run", "train", "valid"]
    assert list(loss["run"].unique()) == ["CV a", "CV b", "final a"]
    assert loss.query("run == 'CV a' and epoch == 1")["train"].item() == 2.0  # mean of folds 0 and 1
    assert families["accuracy"].query("run == 'CV a' and epoch == 2")["valid"].item() == 0.7
    assert len(loss) == 6  # one row per run and epoch, however many folds


def test_example_picks_are_seeded_and_bounded():
    assert list(pick_examples(1000, seed=7)) == list(pick_examples(1000, seed=7))
    assert len(pick_examples(5, seed=7)) == 5 and len(set(pick_examples(1000, seed=7))) == 32


def test_class_names_that_look_like_numbers_or_missing_values_survive_the_csv(tmp_path):
    classes = ["0", "1", "NA", "None"]  # digits' classes; pandas would read these as 0, 1, NaN, NaN
    counts = confusion_counts(pd.Series(["0", "1", "NA", "None", "0"]), pd.Series(["0", "NA", "NA", "None", "1"]),
                              classes)
    counts.to_csv(tmp_path / "confusion.csv", index=False)
    matrix = counts_matrix(read_table(tmp_path / "confusion.csv"), classes)
    assert matrix.sum() == 5 and matrix[2, 2] == 1 and matrix[1, 2] == 1 and matrix[0, 1] == 1


def test_confusion_rows_are_the_true_class_in_the_order_given():
    """Class "c" is neither held nor predicted: it keeps a zero row and column where it is listed."""
    matrix = confusion(["b", "a", "a", "b", "b"], ["b", "b", "a", "b", "a"], ["b", "c", "a"])
    assert matrix.tolist() == [[2, 0, 1], [0, 0, 0], [1, 0, 1]]
    assert confusion([0, 1, 1], [1, 1, 1], range(2)).tolist() == [[0, 1], [0, 2]]

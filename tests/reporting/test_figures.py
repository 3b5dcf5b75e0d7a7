import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from foldwise.reporting import figures
from foldwise.reporting.plot_data import confident_mistakes

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def history(variant=None, folds=1, shift=0.0):
    rows = []
    for fold in range(folds):
        for epoch in (1, 2, 3):
            row = {"epoch": epoch, "train_loss": 1 / epoch + shift, "valid_loss": 1.1 / epoch + shift + fold / 50,
                   "train_acc": 0.5 + epoch / 10, "valid_acc": 0.45 + epoch / 10 - fold / 100}
            if variant:
                row.update(variant=variant, fold=fold)
            rows.append(row)
    return pd.DataFrame(rows)


def assert_png(path, min_size=(400, 300)):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def assert_no_overlap(labels):
    """No two tick labels' drawn boxes intersect: every name can be read."""
    renderer = labels[0].figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels if label.get_text()]
    assert len(boxes) == len(labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), [label.get_text() for label in labels]


def folds_frame(variants, k=5):
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"variant": v, "fold": f, "final_valid_acc": 0.85 + i / 100 + rng.normal(0, 0.003)}
                         for i, v in enumerate(variants) for f in range(k)])


def test_figures_are_written(tmp_path):
    cv = pd.concat([history("baseline", 2), history("l2", 2, shift=0.1)])
    figures.save(figures.learning_curves(cv, history("l2"), "l2"), tmp_path / "curves.png")
    figures.save(figures.cv_comparison(folds_frame(["baseline", "l2"]), "l2"), tmp_path / "cv.png")
    figures.save(figures.confusion(np.diag([5, 6, 7]) + 1, ["a", "b", "c"]), tmp_path / "confusion.png")
    for name in ("curves.png", "cv.png", "confusion.png"):
        assert_png(tmp_path / name)


def test_learning_curves_give_each_variant_its_colour_and_a_fold_band():
    cv = pd.concat([history("baseline", 3), history("l2", 3, shift=0.1), history("dropout", 3, shift=0.2)])
    fig = figures.learning_curves(cv, history("l2"), chosen="l2")
    ax_loss, ax_acc = fig.axes
    colours = {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax_acc.get_lines()}
    assert colours["CV l2 valid"] == mcolors.to_hex(figures.CHOSEN)
    assert colours["final model valid"] == "#000000"
    assert len({colours[f"CV {v} valid"] for v in ("baseline", "l2", "dropout")}) == 3
    assert len(ax_loss.collections) == 3  # one +-std band per variant
    band = ax_loss.collections[0].get_paths()[0].vertices  # baseline's polygon: (epoch, loss) corners
    at_epoch_1 = band[band[:, 0] == 1, 1]
    spread = history("baseline", 3).query("epoch == 1")["valid_loss"].std()
    assert at_epoch_1.max() - at_epoch_1.min() == pytest.approx(2 * spread)  # mean +- 1 std over folds
    assert ax_loss.get_xlabel() == "epoch" and "nats" in ax_loss.get_ylabel()
    assert "fraction" in ax_acc.get_ylabel()


def test_cv_comparison_marks_the_chosen_variant_and_shows_every_fold():
    names = ["baseline", "l2", "l1", "dropout", "augment", "early_stop", "batchnorm", "l2+dropout"]
    fig = figures.cv_comparison(folds_frame(names), chosen="l2+dropout")
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    labels = ax.get_xticklabels()
    assert labels[-1].get_text() == "l2+dropout\n(chosen)" and labels[-1].get_fontweight() == "bold"
    assert_no_overlap(labels)
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == 8 * 5 + 8  # every fold, and one mean per variant


def test_confusion_heatmap_names_fashion_classes_legibly_and_prints_counts():
    matrix = np.arange(100).reshape(10, 10) + 100 * np.eye(10, dtype=int)
    fig = figures.confusion(matrix, FASHION)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == FASHION
    assert_no_overlap(ax.get_xticklabels())
    assert_no_overlap(ax.get_yticklabels())
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[(6, 0)] == str(matrix[6, 0]) and texts[(3, 3)] == str(matrix[3, 3])  # rows true, columns predicted
    assert ax.get_ylabel() == "true class" and ax.get_xlabel() == "predicted class"
    many = [f"{name} (long label {i})" for i, name in enumerate(FASHION * 3)]  # 30 long names still fit
    fig = figures.confusion(np.eye(30, dtype=int), many)
    FigureCanvasAgg(fig).draw()
    assert_no_overlap(fig.axes[0].get_xticklabels())
    assert_no_overlap(fig.axes[0].get_yticklabels())


def test_misclassified_gallery_titles_match_the_predictions():
    rng = np.random.default_rng(1)
    n = 200
    actual = rng.integers(0, 10, n)
    predicted = np.where(rng.random(n) < 0.3, rng.integers(0, 10, n), actual)
    predictions = pd.DataFrame({"index": range(n), "actual": np.array(FASHION)[actual],
                                "predicted": np.array(FASHION)[predicted],
                                "calibrated_confidence": rng.uniform(0.1, 1.0, n).round(4)})
    mistakes = confident_mistakes(predictions, count=12)
    images = rng.integers(0, 255, (n, 1, 28, 28), dtype=np.uint8)[mistakes["index"]]
    fig = figures.gallery(images, mistakes, "most confident mistakes")
    titles = [ax.get_title() for ax in fig.axes]
    expected = [f"{a} /\n{p} ({c:.2f})" for a, p, c in zip(mistakes["actual"], mistakes["predicted"],
                                                            mistakes["calibrated_confidence"])]
    assert titles == expected
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    assert list(mistakes["calibrated_confidence"]) == sorted(wrong["calibrated_confidence"], reverse=True)[:12]
    assert all(ax.title.get_color() == "red" for ax in fig.axes)
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert all(np.array_equal(s, img[0]) for s, img in zip(shown, images))  # each image under its own title


def test_sample_gallery_marks_only_mistakes_red_and_an_empty_one_still_draws(tmp_path):
    rows = pd.DataFrame({"index": [0, 1], "actual": ["Bag", "Coat"], "predicted": ["Bag", "Shirt"],
                         "calibrated_confidence": [0.97, 0.51]})
    fig = figures.gallery(np.zeros((2, 3, 8, 8), np.uint8), rows, "sample")
    assert [ax.title.get_color() for ax in fig.axes] == ["black", "red"]
    assert [ax.get_title() for ax in fig.axes] == ["Bag /\nBag (0.97)", "Coat /\nShirt (0.51)"]
    figures.save(figures.gallery(np.zeros((0, 1, 8, 8), np.uint8), rows.iloc[:0], "no mistakes"),
                 tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png", min_size=(100, 100))


def test_the_reliability_diagram_names_each_ece_and_needs_no_torch():
    """The plots stage draws it: importing torch would add about 2 s to each plots run."""
    import subprocess
    import sys

    script = """
import sys
import pandas as pd
from foldwise.reporting import figures
bins = pd.DataFrame({"probabilities": ["uncalibrated"] * 2 + ["calibrated"] * 2, "lower": [0.5, 0.75] * 2,
                     "upper": [0.75, 1.0] * 2, "count": [3, 1, 0, 4], "confidence": [0.6, 0.9, float("nan"), 0.8],
                     "accuracy": [0.4, 1.0, float("nan"), 0.75]})
fig = figures.reliability_diagram(bins, "single", 1.234)
print([t.get_text() for t in fig.axes[0].get_legend().get_texts()], "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    # ECE: (3 x 0.2 + 1 x 0.1) / 4 = 0.175 uncalibrated; 4 x 0.05 / 4 = 0.05 calibrated
    assert out.strip() == ("['perfect calibration', 'uncalibrated: ECE 0.1750', "
                           "'calibrated (T = 1.234): ECE 0.0500'] False")

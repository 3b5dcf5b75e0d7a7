"""DVC stage: the PNG figures, and the curve files `dvc plots` draws per family (loss, accuracy)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import atomic_dir
from foldwise.data.layout import images_at, read_classes
from foldwise.reporting import figures
from foldwise.reporting.plot_data import confident_mistakes, counts_matrix, curve_families, pick_examples, read_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cv-history", required=True)
    parser.add_argument("--cv-folds", required=True)
    parser.add_argument("--cv", required=True)
    parser.add_argument("--train-history", required=True)
    parser.add_argument("--predictions", required=True)
    parser.add_argument("--confusion", required=True)
    parser.add_argument("--provenance", required=True, help="evaluate's provenance JSON (the seed of the galleries)")
    parser.add_argument("--calibration", required=True, help="evaluate's reliability bins (CSV)")
    parser.add_argument("--comparison", required=True, help="evaluate's comparison JSON (the model used, its T)")
    parser.add_argument("--prepared", required=True, help="prepared images (the galleries show test images)")
    parser.add_argument("--out", required=True, help="folder for the PNG figures")
    parser.add_argument("--curves", required=True, help="folder for <family>.csv (loss, accuracy)")
    args = parse_stage_args(parser, outputs=("out", "curves"))
    chosen = json.loads(Path(args.cv).read_text())["chosen"]
    classes = read_classes(args.prepared)
    seed = json.loads(Path(args.provenance).read_text())["seed"]
    comparison = json.loads(Path(args.comparison).read_text())
    cv_history, train_history = pd.read_csv(args.cv_history), pd.read_csv(args.train_history)
    predictions = read_table(args.predictions)
    mistakes = confident_mistakes(predictions)
    examples = predictions.iloc[pick_examples(len(predictions), seed)]
    with atomic_dir(args.out) as tmp:
        figures.save(figures.learning_curves(cv_history, train_history, chosen), tmp / "learning_curves.png")
        figures.save(figures.cv_comparison(pd.read_csv(args.cv_folds), chosen), tmp / "cv_comparison.png")
        matrix = counts_matrix(read_table(args.confusion), classes)
        figures.save(figures.confusion(matrix, classes), tmp / "confusion_matrix.png")
        figures.save(figures.gallery(images_at(args.prepared, "test", mistakes["index"]), mistakes,
                                     f"The {len(mistakes)} most confidently misclassified test images: "
                                     "true / predicted (calibrated probability)"), tmp / "misclassified.png")
        figures.save(figures.gallery(images_at(args.prepared, "test", examples["index"]), examples,
                                     f"{len(examples)} test images picked at random (seed {seed}): "
                                     "true / predicted (calibrated probability); mistakes in red"),
                     tmp / "sample_predictions.png")
        figures.save(figures.reliability_diagram(pd.read_csv(args.calibration), comparison["used"],
                                                 comparison["temperature"]), tmp / "reliability.png")
    with atomic_dir(args.curves) as tmp:
        for family, table in curve_families(cv_history, train_history).items():
            table.to_csv(tmp / f"{family}.csv", index=False)
    print(f"figures in {args.out}, curves in {args.curves}")


if __name__ == "__main__":
    run_stage(main)

"""DVC stage: PNG figures (learning curves, CV comparison, confusion matrix)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from foldwise.cli import run_stage
from foldwise.outputs import atomic_dir
from foldwise.reports import plot_confusion, plot_cv_comparison, plot_learning_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cv-history", required=True)
    parser.add_argument("--cv-folds", required=True)
    parser.add_argument("--cv", required=True)
    parser.add_argument("--train-history", required=True)
    parser.add_argument("--predictions", required=True)
    parser.add_argument("--metrics", required=True, help="evaluate's JSON (its per-class keys give the class order)")
    parser.add_argument("--out", required=True, help="folder for the PNG figures")
    args = parser.parse_args()
    chosen = json.loads(Path(args.cv).read_text())["chosen"]
    classes = list(json.loads(Path(args.metrics).read_text())["test"]["per_class"])
    with atomic_dir(args.out) as tmp:
        plot_learning_curves(pd.read_csv(args.cv_history), pd.read_csv(args.train_history),
                             tmp / "learning_curves.png")
        plot_cv_comparison(pd.read_csv(args.cv_folds), chosen, tmp / "cv_comparison.png")
        plot_confusion(pd.read_csv(args.predictions), classes, tmp / "confusion_matrix.png")
    print(f"figures in {args.out}")


if __name__ == "__main__":
    run_stage(main)

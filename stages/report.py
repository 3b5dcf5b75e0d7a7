"""DVC stage: reports/report.md, a one-page summary of the run with the figures embedded."""

import argparse
import json
from pathlib import Path

import pandas as pd

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_text
from foldwise.core.params import load_params
from foldwise.reporting.plot_data import read_table
from foldwise.reporting.report import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared-report", required=True, help="prepare's report.json")
    parser.add_argument("--cv", required=True, help="crossval's full summary JSON")
    parser.add_argument("--cv-folds", required=True)
    parser.add_argument("--train", required=True, help="train's JSON summary")
    parser.add_argument("--comparison", required=True,
                        help="evaluate's comparison JSON (single, ensemble, calibration)")
    parser.add_argument("--per-class", required=True)
    parser.add_argument("--provenance", required=True)
    parser.add_argument("--confusion", required=True)
    parser.add_argument("--out", required=True, help="the Markdown file; figures are linked as figures/<name>")
    args = parse_stage_args(parser, outputs=("out",))
    read = lambda path: json.loads(Path(path).read_text())  # noqa: E731
    text = build(load_params(), read(args.prepared_report), read(args.cv), pd.read_csv(args.cv_folds),
                 read(args.train), read(args.comparison), read_table(args.per_class), read(args.provenance),
                 read_table(args.confusion))
    write_text(args.out, text)
    print(f"report in {args.out}")


if __name__ == "__main__":
    run_stage(main)

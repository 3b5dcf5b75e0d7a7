"""DVC stage: K-fold cross-validation of every variant on the train split."""

import argparse
import json
import sys
from pathlib import Path

import torch

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_csv, write_json, write_text
from foldwise.core.params import load_params
from foldwise.data.batches import open_split
from foldwise.data.layout import read_classes
from foldwise.live.monitors import monitor_from_env
from foldwise.reporting.cvstats import cv_table, explain_choice, headline
from foldwise.training.crossval import run_crossval
from foldwise.training.engine import choose_device
from foldwise.training.fanout import fanout_from_env
from foldwise.training.model_files import save_fold_models
from foldwise.training.resume import for_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--history", required=True, help="CSV: one row per variant, fold and epoch")
    parser.add_argument("--folds", required=True, help="CSV: one row per variant and fold")
    parser.add_argument("--metrics", required=True, help="JSON metrics: mean/std/p per variant, chosen variant")
    parser.add_argument("--summary", required=True, help="JSON: the full statistics (CIs, differences, epochs)")
    parser.add_argument("--table", required=True, help="Markdown: the CV table, the choice and why")
    parser.add_argument("--live", required=True, help="dvclive's folder: per-epoch curves while it runs")
    parser.add_argument("--fold-models", required=True,
                        help="folder for the kept fold models (<variant>/fold<k>.pt) and folds.json")
    args = parse_stage_args(parser, outputs=("history", "folds", "metrics", "summary", "table", "fold_models"))
    p = load_params()
    stats = json.loads(Path(args.stats).read_text())
    torch.set_num_threads(p.threads)  # every run's, wherever it trains: the results depend on it
    device = choose_device()
    # None: one run at a time in this process; else local processes side by side, or Ray tasks
    with fanout_from_env(p, device) as fanout:
        if fanout is None:
            train = open_split(args.prepared, "train", stats, device, p.memory_budget_mb)
            device_type, where = device.type, str(device)
        else:
            train = fanout.open_train(args.prepared, stats, p)
            device_type, where = fanout.device_type, fanout.describe()
        print(f"crossval: {where if fanout else f'{device}, one run at a time, {p.threads} torch threads'}",
              file=sys.stderr)
        classes = read_classes(args.prepared)
        checkpoints = for_stage("crossval", p.to_dict(), device_type,
                                [Path(args.prepared) / "manifest.csv", args.stats])
        monitor = monitor_from_env("crossval", live_dir=args.live, group_by=("variant",))
        monitor.start({"stage": "crossval", "params": p.to_dict(), "device": where, "classes": classes,
                       "total_epochs": p.k_folds * sum(p.for_variant(v).epochs for v in p.compared)})
        try:
            result = run_crossval(train, len(classes), p, monitor, checkpoints, fanout)
        finally:
            monitor.close()
    Path(args.live).mkdir(parents=True, exist_ok=True)  # a declared output, even if dvclive could not write
    write_csv(args.history, result.history.drop(columns="seconds").round(6))
    write_csv(args.folds, result.runs.round(6))
    write_json(args.summary, result.summary)
    write_json(args.metrics, headline(result.summary))
    write_text(args.table, cv_table(result.summary))
    save_fold_models(args.fold_models, result.weights, p, classes, stats, train.shape, result.kept_note)
    checkpoints.clear()
    print(f"chosen {explain_choice(result.summary)}")


if __name__ == "__main__":
    run_stage(main)

"""DVC stage: train the chosen (or pinned) variant on train, keep the best epoch on valid."""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_csv, write_json
from foldwise.core.params import load_params
from foldwise.data.batches import open_split
from foldwise.data.layout import read_classes
from foldwise.live.monitors import monitor_from_env
from foldwise.training.callbacks import NullMonitor
from foldwise.training.ddp import join, launched, leave, relaunch
from foldwise.training.engine import choose_device
from foldwise.training.final import resolve_variant, train_final
from foldwise.training.model_files import model_record, save_checkpoint
from foldwise.training.resume import for_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--cv", required=True, help="crossval's full summary JSON (its chosen variant, and why)")
    parser.add_argument("--model", required=True, help="checkpoint to write (models/model.pt)")
    parser.add_argument("--model-record", required=True, help="JSON: the model file's sha256 and size")
    parser.add_argument("--history", required=True, help="CSV: one row per epoch")
    parser.add_argument("--summary", required=True, help="JSON metrics of the final training")
    parser.add_argument("--live", required=True, help="dvclive's folder: per-epoch curves while it runs")
    args = parse_stage_args(parser, outputs=("model", "model_record", "history", "summary"))
    p = load_params()
    if p.train_processes > 1 and not launched():  # DDP: this script again, under torchrun
        sys.exit(relaunch(p.train_processes, sys.argv))
    torch.set_num_threads(p.threads)  # the results depend on it
    variant, source, reason = resolve_variant(p, json.loads(Path(args.cv).read_text()))
    stats = json.loads(Path(args.stats).read_text())
    group, device = join(p.train_processes, choose_device())
    train, valid = (open_split(args.prepared, s, stats, device, p.memory_budget_mb) for s in ("train", "valid"))
    classes = read_classes(args.prepared)
    checkpoints = for_stage("train", p.for_variant(variant).to_dict(), device.type,
                            [Path(args.prepared) / "manifest.csv", args.stats])
    # process 0 alone monitors and writes; the others only train
    monitor = monitor_from_env("train", predictions=True, live_dir=args.live) if group.main else NullMonitor()
    monitor.start({"stage": "train", "params": p.for_variant(variant).to_dict(), "device": str(device),
                   "classes": classes, "total_epochs": p.for_variant(variant).epochs})
    try:
        model, result = train_final(train, valid, len(classes), p, variant, monitor, checkpoints, group)
    finally:
        monitor.close()
        leave(group)
    if not group.main:
        return
    best = result.history[result.best_epoch - 1]
    Path(args.live).mkdir(parents=True, exist_ok=True)  # a declared output, even if dvclive could not write
    write_csv(args.history, pd.DataFrame(result.history).drop(columns="seconds").round(6))
    # keys unlike any param's, so `dvc exp show` needs no file prefix: the variant is in cv.json
    # (chosen) or params.yaml (pinned), and in evaluate's provenance
    write_json(args.summary, {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                              "valid_acc": round(best["valid_acc"], 6), "valid_loss": round(best["valid_loss"], 6)})
    sha256 = save_checkpoint(args.model, model, p, variant, classes, stats, train.shape)
    # evaluate checks the model file against it (a separate cache object: intact when model.pt's is damaged)
    write_json(args.model_record, model_record(args.model, sha256))
    checkpoints.clear()
    print(f"variant {variant}: {reason}")
    print(f"variant {variant} ({source}): best epoch {result.best_epoch}, valid accuracy {best['valid_acc']:.4f}")


if __name__ == "__main__":
    run_stage(main)

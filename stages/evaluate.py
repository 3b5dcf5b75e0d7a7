"""DVC stage: test-set metrics of the final model and of crossval's fold ensemble, calibration, and the
confusion / per-class data for `dvc plots`, and the predictor it used (models/predictor/, with its model card)
for `foldwise predict` and the ONNX export."""

import argparse

import pandas as pd

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_csv, write_json
from foldwise.core.params import load_params, parse_params
from foldwise.data.batches import open_split
from foldwise.data.layout import read_classes
from foldwise.inference.card import model_card
from foldwise.inference.predictor import save_predictor
from foldwise.live.monitors import monitor_from_env, show_test
from foldwise.reporting.metrics import headline_metrics, provenance
from foldwise.reporting.plot_data import confusion_counts, per_class, sample_predictions
from foldwise.training.augment import flip_allowed
from foldwise.training.engine import choose_device
from foldwise.training.ensemble import assess
from foldwise.training.model_files import (
    check_classes,
    load_checkpoint,
    load_fold_models,
    read_fold_record,
    read_record,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-record", required=True, help="train's JSON record of the model's sha256")
    parser.add_argument("--fold-models", required=True, help="crossval's fold models and their folds.json")
    parser.add_argument("--metrics", required=True, help="JSON metrics: single, ensemble, calibration")
    parser.add_argument("--comparison", required=True, help="JSON: every predictor's scores, the choice and why")
    parser.add_argument("--calibration", required=True, help="CSV: the reliability bins before and after")
    parser.add_argument("--predictions", required=True, help="CSV: index,actual,predicted,calibrated_confidence "
                        "per test image (sampled above a bound)")
    parser.add_argument("--confusion", required=True, help="CSV: actual,predicted,count (exact)")
    parser.add_argument("--per-class", required=True, help="CSV: class,precision,recall,f1,support")
    parser.add_argument("--provenance", required=True, help="JSON: dataset, model, variant, seed, device, versions")
    parser.add_argument("--predictor", required=True, help="folder: the predictor used, its record and model card")
    args = parse_stage_args(parser, outputs=("metrics", "comparison", "calibration", "predictions", "confusion",
                                             "per_class", "provenance", "predictor"))
    device = choose_device()
    model, checkpoint = load_checkpoint(args.model, device, read_record(args.model_record), args.model_record)
    p = parse_params(checkpoint["params"], f"{args.model} (params)")
    settings = load_params()  # ensemble and tta; memory_budget_mb is today's machine setting
    classes = read_classes(args.prepared)
    check_classes(classes, checkpoint, args.model)
    test, valid = (open_split(args.prepared, split, checkpoint["stats"], device, settings.memory_budget_mb)
                   for split in ("test", "valid"))
    folds = load_fold_models(args.fold_models, checkpoint["variant"], device, checkpoint)
    result = assess(model, folds, test, valid, classes, settings.ensemble, settings.tta, flip_allowed(p),
                    read_fold_record(args.fold_models)["note"])
    write_csv(args.predictions, sample_predictions(result.predictions, p.seed))
    write_csv(args.confusion, confusion_counts(result.predictions["actual"], result.predictions["predicted"], classes))
    write_csv(args.per_class, per_class(result.metrics))
    write_csv(args.calibration, result.reliability)
    made = {**provenance(p, checkpoint["variant"], device), "model_used": result.used,
            "fold_models": len(folds), "test_images": len(result.predictions)}
    write_json(args.provenance, made)
    save_predictor(args.predictor, result.members, result.flip, result.temperature, result.used, checkpoint,
                   card=lambda summary: model_card(summary, result.rows, result.why, made, checkpoint["params"]))
    write_json(args.comparison, {"used": result.used, "why": result.why, "notes": result.notes,
                                 "temperature": result.temperature, "mcnemar": result.paired, "rows": result.rows})
    write_json(args.metrics, headline_metrics(result.rows, result.used, result.paired))
    print(pd.DataFrame(result.rows).to_string(index=False))
    print(f"using {result.why}")
    monitor = monitor_from_env("evaluate", predictions=True)  # live view: test confusion and example images
    monitor.start({"stage": "evaluate", "params": p.to_dict(), "device": str(device), "classes": classes})
    show_test(monitor, args.prepared, result.predictions, classes, p.seed)
    monitor.close()


if __name__ == "__main__":
    run_stage(main)

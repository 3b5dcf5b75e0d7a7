"""DVC stage: test-set metrics of the final model, and the confusion / per-class data for `dvc plots`."""

import argparse

from foldwise.core.cli import parse_stage_args, run_stage
from foldwise.core.outputs import write_csv, write_json
from foldwise.core.params import load_params, parse_params
from foldwise.data.batches import open_split
from foldwise.data.layout import read_classes
from foldwise.live.monitors import monitor_from_env, show_test
from foldwise.reporting.metrics import provenance
from foldwise.reporting.plot_data import confusion_counts, per_class, sample_predictions
from foldwise.training.engine import choose_device
from foldwise.training.final import evaluate_on, load_checkpoint, read_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-record", required=True, help="train's JSON record of the model's sha256")
    parser.add_argument("--metrics", required=True, help="JSON metrics: test loss, accuracy, macro F1")
    parser.add_argument("--predictions", required=True,
                        help="CSV: index,actual,predicted,confidence per test image (sampled above a bound)")
    parser.add_argument("--confusion", required=True, help="CSV: actual,predicted,count (exact)")
    parser.add_argument("--per-class", required=True, help="CSV: class,precision,recall,f1,support")
    parser.add_argument("--provenance", required=True, help="JSON: dataset, model, variant, seed, device, versions")
    args = parse_stage_args(parser, outputs=("metrics", "predictions", "confusion", "per_class", "provenance"))
    device = choose_device()
    model, checkpoint = load_checkpoint(args.model, device, read_record(args.model_record), args.model_record)
    p = parse_params(checkpoint["params"], f"{args.model} (params)")
    budget = load_params().memory_budget_mb  # a machine setting: today's, not the one trained with
    test = open_split(args.prepared, "test", checkpoint["stats"], device, budget)
    classes = read_classes(args.prepared)
    metrics, predictions = evaluate_on(model, checkpoint, test, classes)
    write_csv(args.predictions, sample_predictions(predictions, p.seed))
    write_csv(args.confusion, confusion_counts(predictions["actual"], predictions["predicted"], classes))
    write_csv(args.per_class, per_class(metrics))
    write_json(args.provenance, {**provenance(p, checkpoint["variant"], device), "test_images": len(predictions)})
    write_json(args.metrics, {"test": {k: metrics[k] for k in ("loss", "accuracy", "macro_f1")}})
    print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    monitor = monitor_from_env("evaluate", predictions=True)  # live view: test confusion and example images
    monitor.start({"stage": "evaluate", "params": p.to_dict(), "device": str(device), "classes": classes})
    show_test(monitor, args.prepared, predictions, classes, p.seed)
    monitor.close()


if __name__ == "__main__":
    run_stage(main)

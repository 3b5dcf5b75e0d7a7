"""The model card written beside the predictor: what it classifies, what it takes, how well it does,
where it came from, and where it should not be trusted (markdown, from evaluate's own numbers)."""

from __future__ import annotations

from typing import Any

# What a model trained by this pipeline cannot know, whatever its scores.
LIMITS = (
    "It has only ever seen images like its training data ({dataset}, {c}x{h}x{w} after preprocessing): "
    "photos of other things, other framings, backgrounds or resolutions are outside what the test set measured, "
    "and it will still put every image in one of its {n} classes, often confidently.",
    "The calibrated probabilities were fitted on the valid split of the same dataset; on other images they "
    "are a ranking, not a guarantee.",
    "Its test scores come from one test split of {test_images} images: the interval above is the sampling "
    "error, not the error on your data.",
)


def _row(row: dict[str, Any]) -> str:
    return f"| {row['name']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['nll']:.4f} | {row['ece']:.4f} |"


def model_card(summary: dict[str, Any], rows: list[dict[str, Any]], why: str, provenance: dict[str, Any],
               params: dict[str, Any]) -> str:
    """The card, from the predictor's ``summary`` (``Predictor.summary``), evaluate's predictor ``rows``
    (the used one, temperature-scaled, last), the sentence ``why`` it was chosen, its ``provenance``
    and the variant's ``params``."""
    spec = summary["input"]
    c, h, w = spec["channels"], spec["height"], spec["width"]
    used = rows[-1]
    n = provenance["test_images"]
    half_width = 1.96 * (used["accuracy"] * (1 - used["accuracy"]) / n) ** 0.5
    context = {"dataset": provenance["dataset"], "c": c, "h": h, "w": w, "n": len(summary["classes"]),
               "test_images": n}
    keys = ("model", "conv_channels", "hidden_sizes", "width", "batchnorm", "dropout", "augment", "optimizer", "lr",
            "weight_decay", "l1", "scheduler", "epochs", "batch_size", "k_folds", "seed", "image_size", "channels")
    lines = [
        f"# Model card: {provenance['model']} on {provenance['dataset']}",
        "",
        "Written by `dvc repro` (evaluate) beside the predictor; every number below is from this run.",
        "",
        "## What it is",
        "",
        f"- Predictor: **{summary['used']}** ({summary['members']} network{'s' if summary['members'] > 1 else ''}"
        f"{', each also on the mirrored image' if summary['test_time_flips'] else ''}), softmax outputs averaged, "
        f"then divided by the temperature T = {summary['temperature']} (calibration on the valid split).",
        f"- Chosen as {why}.",
        f"- Classes ({len(summary['classes'])}, in output order): " + ", ".join(f"`{k}`" for k in summary["classes"]),
        "",
        "## Input and preprocessing",
        "",
        f"- Any image file Pillow reads (PNG, JPEG, GIF, WebP, TIFF, BMP, ...), EXIF rotation applied; "
        f"transparency {spec['transparency']}; 16-bit and float images scaled to 8 bits.",
        f"- Converted to {spec['colour']}, {spec['resize']}: {c} x {h} x {w} uint8.",
        f"- Normalised per channel: (x / 255 - mean) / std, mean {spec['mean']}, std {spec['std']} "
        f"(the train split's).",
        "- `foldwise predict` does all of this with prepare's own functions; `models/model.onnx` takes the "
        f"uint8 N x {c} x {h} x {w} images and does the rest (normalisation included).",
        "",
        "## Test metrics",
        "",
        f"On the {n} test images, never used for training, choosing or calibrating "
        f"(95% interval of the used predictor's accuracy: ±{half_width:.4f}):",
        "",
        "| predictor | accuracy | macro F1 | NLL (nats) | ECE |",
        "|---|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
        "The last row is the predictor saved here.",
        "",
        "## Data and training",
        "",
        f"- Dataset `{provenance['dataset']}`, variant `{provenance['variant']}`, seed {provenance['seed']}; "
        f"torch {provenance['torch']}, torchvision {provenance['torchvision']}.",
        "- Params (params.yaml, with the variant's overrides): "
        + ", ".join(f"`{k}: {params[k]}`" for k in keys if k in params) + ".",
        "",
        "## Limits",
        "",
        *(f"- {limit.format(**context)}" for limit in LIMITS),
        "",
    ]
    return "\n".join(lines)

"""foldwise's benchmark suite: one command, one Markdown report.

    .venv/bin/python benchmarks/run.py [--epochs 5] [--quick] [--skip-pipeline] [--out benchmarks/results.md]

1. Training speed (``benchmarks/training.py``): for softmax regression, the
   MLP 784-512-256-128-64-10 at batch 256 and 64, and LeNet-5, in this one
   process on the same Fashion-MNIST data: (a) a minimal hand-written PyTorch
   loop on preloaded tensors, (b) foldwise's own ``engine.fit``, (c) the
   textbook torchvision dataset + per-sample transforms + DataLoader. Median
   seconds per epoch (training on 60,000 images plus testing on 10,000),
   training images per second, peak memory, and the ratios b/a and c/b.
2. Time to accuracy: params.yaml's model and hyperparameters (the default CNN)
   trained by ``fit`` on the 60,000 training images; the training seconds at
   which test accuracy first reaches 0.90 and 0.91.
3. The pipeline (``benchmarks/pipeline.py``): a full ``dvc repro`` of the
   default params.yaml in a fresh clone of HEAD, per stage (prepare and
   normalize included), then a second ``dvc repro`` that has nothing to do.

``--quick`` (what CI runs, so the suite cannot rot): 2 epochs on 2,048
training and 1,000 test images, and the pipeline on a 300-image-per-split
subset with 1 epoch, 2 folds and one variant. Its timings mean nothing and
nothing asserts them. The device is the pipeline's (``FOLDWISE_DEVICE``,
default: CUDA when there is one).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import pipeline_markdown, run_pipeline  # noqa: E402
from training import CONFIGS, PATHS, PeakMemory, compare, load_fashion_mnist, time_to_accuracy  # noqa: E402

from foldwise.engine import choose_device  # noqa: E402
from foldwise.params import load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.90, 0.91)
QUICK_PIPELINE = ["max_images_per_split=300", "epochs=1", "k_folds=2", "compare=[baseline]"]


def machine(device: torch.device) -> str:
    """One line on the machine and versions, for the report's header."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU used"
    dvc = subprocess.run([Path(sys.executable).parent / "dvc", "--version"], capture_output=True, text=True).stdout
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GB RAM{gpu}; device {device}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), DVC {dvc.strip()}, Python {platform.python_version()}; "
            f"commit {commit.strip()}; {datetime.date.today()}")


def training_markdown(results: dict, d_train: int, cuda: bool) -> str:
    """The side-by-side table: one row per configuration and path."""
    mem = "peak GPU MB" if cuda else "RSS growth MB"
    lines = [f"| model (batch) | path | median s/epoch | train images/s | data MB | {mem} | test acc (last epoch) "
             "| ratio |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, paths in results.items():
        med = {path: statistics.median(r.seconds) for path, r in paths.items()}
        ratio = {"hand": "", "foldwise": f"b/a = {med['foldwise'] / med['hand']:.2f}",
                 "textbook": f"c/b = {med['textbook'] / med['foldwise']:.2f}"}
        for path in PATHS:
            r = paths[path]
            memory = r.cuda_peak_mb if cuda else r.rss_peak_mb
            label = {"hand": "(a) hand-written", "foldwise": "(b) foldwise", "textbook": "(c) textbook"}[path]
            lines.append(f"| {name} ({CONFIGS[name][1]}) | {label} | {med[path]:.2f} | {d_train / med[path]:,.0f} | "
                         f"{r.data_mb:,.0f} | {memory:,.0f} | {r.test_acc[-1]:.4f} | {ratio[path]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per path and model (median over them)")
    parser.add_argument("--workers", type=int, default=0, help="the textbook DataLoader's worker processes")
    parser.add_argument("--quick", action="store_true", help="CI's reduced mode: tiny data, 2 epochs")
    parser.add_argument("--models", nargs="*", choices=list(CONFIGS), default=list(CONFIGS),
                        help="only these configurations")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the in-process benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    device = choose_device()
    p = load_params(ROOT / "params.yaml")
    header = machine(device)
    print(header, flush=True)
    with tempfile.TemporaryDirectory(prefix="foldwise-bench-data-") as tmp:
        d = load_fashion_mnist(Path(tmp), device, *((2048, 1000) if args.quick else (0, 0)))
        memory = PeakMemory(device)
        results = {}
        for name in args.models:
            results[name] = compare(name, d, p, epochs, args.workers, memory)
            for path, r in results[name].items():
                print(f"{name} {path}: s/epoch {[round(s, 2) for s in r.seconds]}, test acc {r.test_acc[-1]:.4f}",
                      flush=True)
        tta_p = dataclasses.replace(p, epochs=1) if args.quick else p
        rows, reached = time_to_accuracy(d, tta_p, THRESHOLDS)
        n_train = len(d.y)
    sections = [
        "# Benchmark results", "",
        f"Command: `.venv/bin/python benchmarks/run.py{' --quick' if args.quick else ''}`"
        f"{' (reduced mode: timings mean nothing)' if args.quick else ''}.", "",
        f"Machine: {header}.", "",
        "## Training: hand-written loop vs foldwise vs textbook DataLoader", "",
        f"{n_train:,} Fashion-MNIST training images per epoch, then the {len(d.yt):,} test images; "
        f"median over {epochs} interleaved epochs per path; Adam, one-cycle lr {p.lr}, params.yaml's "
        f"other hyperparameters; same initial weights. The textbook DataLoader uses {args.workers} workers. "
        "(a) and (c) use torch's defaults (Adam's per-parameter loop, NCHW memory); (b) is foldwise as the "
        "stages run it (fused Adam, channels-last memory for convolutions). *data MB*: the images and labels "
        "a path holds (preloaded float32 for a and b, torchvision's uint8 for c); *RSS growth MB*: the most "
        "this process and its DataLoader workers grew during one epoch.", "",
        training_markdown(results, n_train, device.type == "cuda"), "",
        "## Time to accuracy: the default CNN", "",
        f"params.yaml's model ({p.model}, conv_channels {p.conv_channels}) and hyperparameters "
        f"({tta_p.epochs} epochs, batch {p.batch_size}), trained by `engine.fit` on the {n_train:,} training "
        "images and tested after each epoch. Seconds are cumulative and include each epoch's test pass.", "",
        "| epoch | seconds | test accuracy |", "|---:|---:|---:|",
        *[f"| {r['epoch']} | {r['seconds']:.1f} | {r['test_acc']:.4f} |" for r in rows], "",
        *[f"- test accuracy {t:.2f}: " + (f"**{s:.1f} s**" if s is not None else "not reached")
          for t, s in reached.items()], "",
    ]
    if not args.skip_pipeline:
        overrides = QUICK_PIPELINE if args.quick else []
        run = run_pipeline(overrides)
        sections += ["## The pipeline: `dvc repro` from a fresh clone", "",
                     f"params.yaml {'with ' + ' '.join(overrides) if overrides else 'as committed'}; "
                     "a stage's seconds run from DVC announcing it to announcing the next, so they include "
                     "Python start-up and DVC hashing and caching its outputs.", "",
                     pipeline_markdown(run), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(sections))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

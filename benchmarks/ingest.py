"""Ingestion and loading speed: a photo folder through download+prepare, and one epoch per loading path.

    .venv/bin/python benchmarks/ingest.py [--photos 2000] [--prepared data/prepared]

1. Writes ``--photos`` synthetic JPEG photos (sizes 300-500 x 250-400, like
   PetImages, 2 classes, 1% broken files) and times copy_user_data + prepare
   with image_size 64: photos per second, skipped files counted.
2. On a prepared dataset (default: the Fashion-MNIST of the last `dvc repro`),
   times one LeNet training epoch over the train split preloaded, and streamed
   with 0 and 2 DataLoader workers, each in a fresh process so the peak
   resident memory (max RSS) of each path is its own.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def ingest(photos: int) -> dict:
    from PIL import Image

    from foldwise.data.download import copy_user_data
    from foldwise.data.prepare import REPORT, prepare
    from foldwise.data.sources import SOURCES, load_raw

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        mine = Path(tmp) / "mine"
        for i in range(photos):
            cls = ("cat", "dog")[i % 2]
            (mine / cls).mkdir(parents=True, exist_ok=True)
            if i % 100 == 99:
                (mine / cls / f"{i}.jpg").write_bytes(b"")  # broken, as in PetImages
                continue
            w, h = int(rng.integers(300, 500)), int(rng.integers(250, 400))
            small = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=85)
            (mine / cls / f"{i}.jpg").write_bytes(buffer.getvalue())
        started = time.perf_counter()
        copy_user_data(mine, Path(tmp) / "raw")
        copied = time.perf_counter()
        raw = load_raw(SOURCES["folder"], Path(tmp) / "raw")
        prepare(raw, raw.classes, Path(tmp) / "prepared", 0.1, 0, 0, 0.1, channels=3, image_size=64)
        raw.close()
        done = time.perf_counter()
        report = json.loads((Path(tmp) / "prepared" / REPORT).read_text())
    return {"photos": photos, "copy_s": round(copied - started, 2), "prepare_s": round(done - copied, 2),
            "photos_per_s": round(photos / (done - copied), 1), "skipped": report["skipped"]}


def one_epoch(prepared: str, budget_mb: int, workers: int) -> dict:
    import torch

    from foldwise.core.params import load_params
    from foldwise.data.batches import open_split, uint8_chunks
    from foldwise.data.layout import read_classes, split_files
    from foldwise.data.normalize import compute_stats
    from foldwise.training.engine import train_one_epoch
    from foldwise.training.models import build_model
    from foldwise.training.optim import make_optimizer

    torch.set_num_threads(2)
    p = load_params(ROOT / "params.yaml")
    files, classes = split_files(prepared, "train"), read_classes(prepared)
    stats = compute_stats(uint8_chunks(files, workers=workers))
    started = time.perf_counter()
    data = open_split(prepared, "train", stats, torch.device("cpu"), budget_mb, workers)
    opened = time.perf_counter()
    model = build_model(data.shape, len(classes), p)
    train_one_epoch(model, data, make_optimizer(model, p), p, torch.Generator().manual_seed(0))
    done = time.perf_counter()
    return {"path": type(data).__name__, "workers": workers, "images": len(data),
            "load_s": round(opened - started, 2), "epoch_s": round(done - opened, 2),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--prepared", default=str(ROOT / "data" / "prepared"))
    parser.add_argument("--epoch", nargs=2, type=int, metavar=("BUDGET_MB", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch:
        print(json.dumps(one_epoch(args.prepared, *args.epoch)))
        return
    print(json.dumps(ingest(args.photos)))
    for budget, workers in ((4096, 0), (0, 0), (0, 2)):
        done = subprocess.run([sys.executable, __file__, "--prepared", args.prepared, "--epoch", str(budget),
                               str(workers)], capture_output=True, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

"""How fast the trained model classifies new images: `foldwise predict` on a folder of PNGs, and its
model step alone (torch and ONNX) against evaluate's own batch path on the same images.

    .venv/bin/python benchmarks/predict.py --out benchmarks/predict.md [--rounds 5]
    (after `make run`: it reads models/predictor, models/model.onnx and data/prepared/test)

- End to end: `foldwise predict data/prepared/test` as a user runs it (a new process: start-up,
  loading the predictor, walking the folder, reading and decoding every PNG, the model, writing the
  CSV), with decoding processes (``--workers``, default min(4, CPUs), used when decoding is slow
  enough to pay) and without them (0); the same on ``--photos`` photo-sized JPEGs written here.
- Decoding alone: the files read and decoded as predict does, in one process and in a pool.
- Model step alone, on the decoded uint8 images already in memory: the torch predictor in predict's
  windows of ``WINDOW`` images; the ONNX graph in onnxruntime, same windows; and evaluate's path (the
  whole split normalised at once, ``log_probabilities`` then ``scale``). Interleaved, the order rotated
  each round; medians; the ratios are taken within each round, so the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import dvc_env  # noqa: E402
from run import machine  # noqa: E402

from foldwise.data.batches import Preloaded, default_workers  # noqa: E402
from foldwise.data.layout import split_files  # noqa: E402
from foldwise.data.normalize import to_inputs  # noqa: E402
from foldwise.inference.export import onnx_log_probs, open_session  # noqa: E402
from foldwise.inference.inputs import decode_job  # noqa: E402
from foldwise.inference.predict import POOL_ABOVE_S, PROBE, WINDOW  # noqa: E402
from foldwise.inference.predictor import Predictor, load_predictor  # noqa: E402
from foldwise.reporting.calibration import scale  # noqa: E402
from foldwise.training.ensemble import log_probabilities  # noqa: E402


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def windows(images: torch.Tensor) -> list[torch.Tensor]:
    return list(images.split(WINDOW))


def model_steps(predictor: Predictor, session, images: torch.Tensor) -> dict[str, Callable[[], object]]:  # noqa: ANN001
    """The three ways to get calibrated log-probabilities of ``images`` (uint8 N x C x H x W)."""
    def evaluate_path() -> torch.Tensor:
        inputs = Preloaded(to_inputs(images, predictor.stats, predictor.device))
        return scale(log_probabilities(predictor.members, inputs, predictor.flip), predictor.temperature)

    return {"evaluate's batch path": evaluate_path,
            "predict, torch": lambda: [predictor.log_probs(w) for w in windows(images)],
            "predict, ONNX": lambda: [onnx_log_probs(session, w) for w in windows(images)]}


def decoders(paths: list[Path], predictor: Predictor, workers: int) -> dict[str, Callable[[], object]]:
    work = functools.partial(decode_job, channels=predictor.channels, size=predictor.size)

    def serial() -> list:
        return [work((p.read_bytes(), "")) for p in paths]

    def pooled() -> list:
        with multiprocessing.get_context("fork").Pool(workers) as pool:  # as predict starts its pool
            return pool.map(work, [(p.read_bytes(), "") for p in paths], chunksize=16)

    return {"1 process": serial, f"{workers} processes": pooled}


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` photo-sized JPEGs (1200-1600 x 900-1200: phone photos as a chat app resizes them; smooth
    colour, quality 85)."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(1200, 1601)), int(rng.integers(900, 1201))
        small = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=85)
        paths.append(folder / f"photo-{i:04d}.jpg")
        paths[-1].write_bytes(buffer.getvalue())
    return paths


def end_to_end(folder: Path, predictor_dir: Path, workers: int) -> float:
    return seconds(lambda: subprocess.run(
        [Path(sys.executable).parent / "foldwise", "predict", str(folder), "--predictor", str(predictor_dir),
         "--workers", str(workers), "--out", os.devnull], check=True, env=dvc_env(), capture_output=True))


def rounds_of(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each case per round, the cases' order rotated each round."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(seconds(cases[name]))
    return times


def table(times: dict[str, list[float]], n: int, baseline: str) -> list[str]:
    rows = ["| path | median s | images/s | ratio to " + baseline + " (median of per-round ratios) |",
            "|---|---:|---:|---:|"]
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[baseline])]
        rows.append(f"| {name} | {statistics.median(ts):.3f} | {n / statistics.median(ts):,.0f} | "
                    f"{statistics.median(ratios):.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", type=Path, default=ROOT / "models/predictor")
    parser.add_argument("--onnx", type=Path, default=ROOT / "models/model.onnx")
    parser.add_argument("--prepared", type=Path, default=ROOT / "data/prepared")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=300, help="photo-sized JPEGs for the decoding tables")
    parser.add_argument("--out", type=Path, help="write the report here (default: print it)")
    args = parser.parse_args(argv)
    predictor = load_predictor(args.predictor)
    session, _ = open_session(args.onnx)
    files = split_files(args.prepared, "test")
    folder = files.paths[0].parents[1]  # data/prepared/test
    images = torch.from_numpy(np.stack([decode_job((p.read_bytes(), ""), predictor.channels, predictor.size)
                                        .transpose(2, 0, 1) for p in files.paths]))
    n, workers = len(images), max(default_workers(), 2)
    steps = rounds_of(model_steps(predictor, session, images), args.rounds)
    decoding = rounds_of(decoders(files.paths, predictor, workers), args.rounds)
    e2e = rounds_of({f"--workers {workers}": lambda: end_to_end(folder, args.predictor, workers),
                     "--workers 0": lambda: end_to_end(folder, args.predictor, 0)}, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp) / "photos", args.photos)
        photo_decoding = rounds_of(decoders(photos, predictor, workers), args.rounds)
        photo_e2e = rounds_of({f"--workers {workers}": lambda: end_to_end(photos[0].parent, args.predictor, workers),
                               "--workers 0": lambda: end_to_end(photos[0].parent, args.predictor, 0)}, args.rounds)
    c, h, w = predictor.shape
    lines = [
        "# Predicting new images: speed", "",
        f"Written by `.venv/bin/python benchmarks/predict.py --out benchmarks/predict.md --rounds {args.rounds}` "
        "after `make run`; every figure below is from that one run. Medians over the rounds; ratios are taken "
        "within each round (the machine's speed drifts between rounds).", "",
        f"Machine: {machine(predictor.device)}.", "",
        f"The default pipeline's predictor: {predictor.used}, {len(predictor.members)} network(s) "
        f"({predictor.params.get('model')}), {c} x {h} x {w} inputs; the {n:,} PNGs of "
        f"`{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}`.", "",
        "## `foldwise predict` on a folder, end to end", "",
        "A new process per run, as a user runs it: start-up, loading the predictor, walking the folder, "
        "reading and decoding every file, the model, the CSV. `--workers N` decodes in N processes when the "
        f"first {PROBE} images show that it pays (more than {POOL_ABOVE_S * 1e3:g} ms each).", "",
        f"The {n:,} test PNGs ({h} x {w}):", "",
        *table(e2e, n, "--workers 0"), "",
        f"{args.photos:,} photo-sized JPEGs (1200-1600 x 900-1200 pixels, written by the benchmark), resized to "
        f"{h} x {w} as prepare would:", "",
        *table(photo_e2e, args.photos, "--workers 0"), "",
        "## Decoding alone", "",
        "Reading and decoding the files as predict does (prepare's `decode`), in this process and in a pool of "
        "processes (the pool's start-up included).", "",
        "The test PNGs:", "",
        *table(decoding, n, "1 process"), "",
        "The photo-sized JPEGs:", "",
        *table(photo_decoding, args.photos, "1 process"), "",
        "## The model step alone", "",
        "Calibrated probabilities of the decoded images, already in memory as uint8. *evaluate's batch path*: "
        "the whole split normalised at once, then `log_probabilities` and `scale`, as the evaluate stage runs it. "
        f"*predict*: windows of {WINDOW} images, the torch predictor or the ONNX graph in onnxruntime "
        f"({session.get_providers()[0]}).", "",
        *table(steps, n, "evaluate's batch path"), "",
    ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

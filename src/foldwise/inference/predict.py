"""Classify many images: decode in worker processes, batch, run the model, one row per image.

Items are taken a window at a time (``WINDOW`` images), so memory stays bounded however large the
input; the files of a window are decoded, then the model runs on them. Decoding moves to a pool of
processes (Pillow holds the GIL) when it is slow enough to pay for shipping bytes and pixels between
processes: photos, not the 28 x 28 PNGs of a prepared split (benchmarks/predict.md measures both).
A file that cannot be used gets a row with its reason instead of a prediction: one bad file never
stops the rest.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from foldwise.data.images import Size, SkipImage
from foldwise.inference.inputs import Item, decode_job

WINDOW = 1024  # images decoded, then predicted, at a time: about 3 MB of 28x28 pixels, 150 MB of 224x224 RGB
PROBE = 16  # images decoded here first, timed, to decide whether a pool pays
# Decoding time per image above which the pool is used. Measured (benchmarks/predict.md): a 28x28
# PNG decodes in under 0.1 ms and gains nothing from a pool; a photo takes milliseconds and does.
POOL_ABOVE_S = 1e-3


def _bytes(item: Item) -> tuple[bytes | None, str]:
    if item.read is None:
        return None, item.reason
    try:
        return item.read(), ""
    except SkipImage as skip:
        return None, skip.reason


def _windows(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    window: list[Item] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def rows_for(names: list[str], log_probs: torch.Tensor, classes: list[str], top_k: int) -> list[dict[str, Any]]:
    """One row per image: path, predicted class, its calibrated probability, the top ``top_k``."""
    k = min(top_k, len(classes))
    probs, idx = log_probs.exp().topk(k, dim=1)
    rows = []
    for name, p, i in zip(names, probs.tolist(), idx.tolist()):
        row: dict[str, Any] = {"path": name, "predicted": classes[i[0]], "probability": round(p[0], 6)}
        for rank in range(k):
            row[f"top{rank + 1}"] = classes[i[rank]]
            row[f"top{rank + 1}_probability"] = round(p[rank], 6)
        row["skipped"] = ""
        rows.append(row)
    return rows


def predict_items(items: Iterable[Item], model: Callable[[torch.Tensor], torch.Tensor], classes: list[str],
                  channels: int, size: Size, top_k: int = 3, workers: int = 0,
                  progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Rows for ``items``, in their order: ``model`` maps uint8 N x C x H x W images to calibrated
    log-probabilities; decoding (``channels``, ``size``: prepare's conversion) runs in ``workers``
    processes when it is slow enough to pay (0: always here). ``progress(n)`` is told of every ``n``
    images done."""
    work = functools.partial(decode_job, channels=channels, size=size)
    pool, decided = None, not workers
    try:
        for window in _windows(items, WINDOW):
            jobs = [_bytes(item) for item in window]  # reading stays here: archives are not shared
            decoded: list[np.ndarray | str] = []
            if not decided and len(jobs) > PROBE:
                started = time.perf_counter()
                decoded = [work(job) for job in jobs[:PROBE]]
                decided = True
                if (time.perf_counter() - started) / PROBE > POOL_ABOVE_S:
                    # fork, as torch's DataLoader workers on Linux: they start in milliseconds, and only
                    # run Pillow and NumPy (decode_job), never torch, whose threads they do not inherit
                    pool = multiprocessing.get_context("fork").Pool(workers)
            rest = jobs[len(decoded):]
            decoded += pool.map(work, rest, chunksize=4) if pool else [work(job) for job in rest]
            good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            rows: dict[int, dict[str, Any]] = {}
            if good:
                images = torch.from_numpy(np.stack([decoded[i].transpose(2, 0, 1) for i in good]))
                for i, row in zip(good, rows_for([window[i].name for i in good], model(images), classes, top_k)):
                    rows[i] = row
            for i, item in enumerate(window):
                yield rows.get(i) or {"path": item.name, "predicted": "", "probability": "", "skipped": decoded[i]}
            if progress:
                progress(len(window))
    finally:
        if pool is not None:
            pool.close()
            pool.join()

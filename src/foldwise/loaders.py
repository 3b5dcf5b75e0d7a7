"""Batches for training and evaluation: preloaded on the device, or streamed from the image files.

Preloading decodes a split once into one normalised float32 tensor on the
device: the fastest path (about 10x ImageFolder + DataLoader on 2 cores).
When that tensor would exceed ``memory_budget_mb``, batches are read from
the PNG files instead, by a DataLoader with worker processes. Both paths
take the batch order from the caller (a permutation drawn from a CPU
generator) and normalise with the same arithmetic, so for the same seed they
yield the same batches, bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from foldwise.data import _decode, load_split, read_manifest
from foldwise.engine import Preloaded, to_inputs
from foldwise.prepare import CLASSES, SPLITS

WORKERS_ENV = "FOLDWISE_WORKERS"  # DataLoader worker processes; a machine setting, not a param
BYTES_PER_VALUE = 4  # preloaded images are float32


def default_workers() -> int:
    """``FOLDWISE_WORKERS`` or min(4, CPU count): decoding PNGs is CPU-bound."""
    value = os.environ.get(WORKERS_ENV, "")
    if value:
        if not value.isdigit():
            raise ValueError(f"{WORKERS_ENV}={value!r} is not valid; use 0 (no workers) or a positive integer")
        return int(value)
    return min(4, os.cpu_count() or 1)


class PngFiles(Dataset):
    """Image files with labels; item i is (uint8 C x H x W tensor, label)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor) -> None:
        self.paths = paths
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(_decode(self.paths[i])).permute(2, 0, 1).contiguous(), self.labels[i]

    def subset(self, idx: np.ndarray) -> "PngFiles":
        return PngFiles([self.paths[i] for i in idx], self.labels[torch.as_tensor(idx)])


def split_files(prepared_dir: str | Path, split: str) -> tuple[PngFiles, list[str]]:
    """The files and labels of ``split`` (nothing decoded), and the class names."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    prepared_dir = Path(prepared_dir)
    rows = read_manifest(prepared_dir).query("split == @split")
    if rows.empty:
        raise ValueError(f"{prepared_dir}: split {split!r} has no images")
    labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
    classes = json.loads((prepared_dir / CLASSES).read_text())
    return PngFiles([prepared_dir / p for p in rows["path"]], labels), classes


class Streamed:
    """A split read from its files batch by batch (DataLoader workers), normalised on the device."""

    def __init__(self, files: PngFiles, stats: dict[str, Any], device: torch.device, workers: int) -> None:
        self.files, self.stats, self.device, self.workers = files, stats, device, workers
        self.labels = files.labels.to(device)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.files[0][0].shape)

    def subset(self, idx: np.ndarray) -> "Streamed":
        return Streamed(self.files.subset(idx), self.stats, self.device, self.workers)

    def batches(self, order: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.files, batch_sampler=[b.tolist() for b in order.split(size)],
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            yield to_inputs(images, self.stats, self.device), labels.to(self.device, non_blocking=True)


def image_shape(files: PngFiles) -> tuple[int, int, int]:
    """C x H x W of the first image (prepare makes them all the same)."""
    with Image.open(files.paths[0]) as im:
        return len(im.getbands()), im.size[1], im.size[0]


def open_split(prepared_dir: str | Path, split: str, stats: dict[str, Any], device: torch.device,
               memory_budget_mb: int, workers: int | None = None) -> Preloaded | Streamed:
    """Preload ``split`` when its float32 tensor fits ``memory_budget_mb``, else stream it."""
    files, _ = split_files(prepared_dir, split)
    needed = len(files) * int(np.prod(image_shape(files))) * BYTES_PER_VALUE
    if needed <= memory_budget_mb * 2**20:
        images = load_split(prepared_dir, split)
        return Preloaded(to_inputs(images.images, stats, device), images.labels.to(device))
    print(f"{split}: {needed / 2**20:.0f} MB of images exceeds memory_budget_mb={memory_budget_mb}; "
          f"streaming from disk")
    return Streamed(files, stats, device, default_workers() if workers is None else workers)


def uint8_chunks(files: PngFiles, pixels: int = 8 << 20, workers: int | None = None) -> Iterator[torch.Tensor]:
    """The images of ``files`` in order, as uint8 N x C x H x W chunks of about ``pixels`` values."""
    chunk = max(1, pixels // int(np.prod(image_shape(files))))
    loader = DataLoader(files, batch_size=chunk, num_workers=default_workers() if workers is None else workers)
    for images, _ in loader:
        yield images

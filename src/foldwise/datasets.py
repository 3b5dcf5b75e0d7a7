"""SOURCES registry: dataset name -> where its files live, how to verify and read them.

Checksums are of the DECOMPRESSED content: Debian's ``dataset-fashion-mnist``
recompressed the official ``.gz`` files (different ``.gz`` md5s), but the
bytes inside are identical, so one check accepts both the local mirror and
the official download.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# Images as uint8 (N, H, W, C) and labels as int64 (N,), per source split.
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Source:
    """How to fetch, verify and read one dataset."""

    files: dict[str, str]  # file name -> md5 of its decompressed content
    mirrors: tuple[str, ...]  # local folders or base URLs, tried in order
    classes: tuple[str, ...]  # index = label
    read: Callable[[Path], Splits]  # folder of verified files -> splits
    install_hint: str = ""  # how a user gets the files when no mirror works


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (gzip or raw) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header promises {expected} bytes of data for shape {tuple(dims)}, "
            f"file has {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def read_idx_pair(folder: Path, prefix_by_split: dict[str, str]) -> Splits:
    """Read MNIST-style ``<prefix>-images-idx3-ubyte.gz`` / ``-labels-idx1-`` pairs."""
    splits: Splits = {}
    for split, prefix in prefix_by_split.items():
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {prefix} has {len(images)} images but {len(labels)} labels")
        splits[split] = (images[..., None], labels)  # grey: one channel
    return splits


def _read_mnist_like(folder: Path) -> Splits:
    return read_idx_pair(folder, {"train": "train", "test": "t10k"})


SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        files={
            "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=(
            "/usr/share/datasets/fashion-mnist",  # Debian: apt-get install dataset-fashion-mnist
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        ),
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        read=_read_mnist_like,
        install_hint=(
            "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs "
            "the files under /usr/share/datasets/fashion-mnist/); or put the four files "
            "in a folder and set FOLDWISE_MIRROR=/that/folder."
        ),
    ),
}


def get_source(name: str) -> Source:
    """The registry entry for ``name``; unknown names list the valid ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name!r} (params.yaml key 'dataset'); valid: {', '.join(SOURCES)}"
        ) from None

"""The prepared folder's layout (split names, manifest, classes file) and reading a split back:
its files and labels from the manifest, and decoding them once into tensors.

Training slices batches from decoded tensors instead of decoding image files
every epoch (about 10x faster than ImageFolder + DataLoader on 2 cores);
``batches`` streams the files instead when they would not fit in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

# torch is imported where a tensor is made: prepare and plots read the layout only, and importing
# torch would add a second (about 1 s) to each of their runs.
if TYPE_CHECKING:
    import torch

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.csv"  # one row per image: path, label, class, split, pixel md5, source name
CLASSES = "classes.json"  # class names in label order
PIXELS = "{split}.npy"  # a split's images as one uint8 N x C x H x W array, in manifest order


def read_manifest(prepared_dir: str | Path) -> pd.DataFrame:
    """The manifest of a prepared folder, checked for the columns we rely on."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    manifest = pd.read_csv(path)
    missing = {"path", "label", "class", "split"} - set(manifest.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return manifest


def read_classes(prepared_dir: str | Path) -> list[str]:
    """Class names in label order, as prepare wrote them."""
    return json.loads((Path(prepared_dir) / CLASSES).read_text())


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        array = np.array(im)  # writable: torch.from_numpy warns on read-only arrays
    return array[..., None] if array.ndim == 2 else array


def _shape(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as im:
        return len(im.getbands()), im.size[1], im.size[0]


class PngFiles:
    """Image files with labels; item i is (uint8 C x H x W tensor, label). Nothing decoded up front.

    A map-style dataset (``len`` and ``[i]``), as torch's DataLoader reads them.

    ``pixels``: prepare's ``<split>.npy`` holding the same images in the same
    order, when it wrote one; ``decode_all`` then loads it instead of decoding.
    """

    def __init__(self, paths: list[Path], labels: torch.Tensor, pixels: Path | None = None) -> None:
        self.paths = paths
        self.labels = labels
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        return torch.from_numpy(_decode(self.paths[i])).permute(2, 0, 1).contiguous(), self.labels[i]

    def subset(self, idx: np.ndarray) -> PngFiles:
        import torch

        return PngFiles([self.paths[i] for i in idx], self.labels[torch.as_tensor(idx)])

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W of the first image (prepare makes them all the same)."""
        return _shape(self.paths[0])


def _split_rows(prepared_dir: Path, split: str) -> pd.DataFrame:
    """The manifest rows of ``split``, in manifest order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rows = read_manifest(prepared_dir).query("split == @split")
    if rows.empty:
        raise ValueError(f"{prepared_dir / MANIFEST}: split {split!r} has no images")
    return rows


def split_files(prepared_dir: str | Path, split: str) -> PngFiles:
    """The files and labels of ``split``, from the manifest."""
    prepared_dir = Path(prepared_dir)
    rows = _split_rows(prepared_dir, split)
    import torch

    labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
    pixels = prepared_dir / PIXELS.format(split=split)
    return PngFiles([prepared_dir / p for p in rows["path"]], labels, pixels if pixels.is_file() else None)


def images_at(prepared_dir: str | Path, split: str, indices: np.ndarray) -> np.ndarray:
    """Images ``indices`` (positions in the split, as evaluate numbers them) as uint8 N x C x H x W.

    Without torch: the plots stage reads its galleries here."""
    prepared_dir = Path(prepared_dir)
    paths = [prepared_dir / p for p in _split_rows(prepared_dir, split)["path"]]
    if len(indices) == 0:
        return np.zeros((0, *_shape(paths[0])), dtype=np.uint8)
    return np.stack([_decode(paths[int(i)]).transpose(2, 0, 1) for i in indices])


def decode_all(files: PngFiles) -> torch.Tensor:
    """Every image of ``files`` as one uint8 N x C x H x W tensor (from ``files.pixels`` when there)."""
    import torch

    if files.pixels is not None:
        array = np.load(files.pixels, allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 4 or len(array) != len(files):
            raise ValueError(f"{files.pixels}: {array.dtype} {array.shape} does not hold the {len(files)} "
                             f"images of the manifest; run the prepare stage again (dvc repro -f -s prepare)")
        return torch.from_numpy(array)
    arrays = [_decode(p) for p in files.paths]  # threads measured 3x slower (GIL)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes {sorted(shapes)[:3]}; prepare must resize")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


"""SOURCES registry: dataset name -> where its files live, how to verify and read them.

A checksum is the md5 of the file or of its decompressed content. Content
checksums are preferred: Debian's ``dataset-fashion-mnist`` recompressed the
official ``.gz`` files (different ``.gz`` md5s) but the bytes inside are
identical, so one check accepts both the local mirror and the official
download.

A source without a test split (``digits``, ``dogs-vs-cats``, ``folder``) gets
one carved out by prepare (``test_size``). Array sources (IDX, CIFAR,
digits) are decoded whole; file sources (``dogs-vs-cats``, ``folder``) are
listed here and decoded one file at a time by prepare, which skips and counts
the files that are not usable images.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from foldwise.core.errors import UnknownName
from foldwise.data.archives import open_tree
from foldwise.data.readers import USER_FOLDER, FileImages, RawData, read_dogs_vs_cats, read_folder

__all__ = ["SOURCES", "USER_FOLDER", "FileImages", "RawData", "Source", "get_source", "load_raw"]

# Images as uint8 (N, H, W, C) and labels as int64 (N,), per source split.
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Source:
    """How to fetch, verify and read one dataset."""

    files: dict[str, str | None]  # file name -> md5 of its (decompressed) content; None = no pinned md5
    mirrors: tuple[str, ...]  # local folders or base URLs, tried in order
    classes: tuple[str, ...]  # index = label; empty = taken from the data (folder)
    read: Callable[..., Splits | RawData]  # folder of verified files (, label_pattern) -> data
    install_hint: str = ""  # how a user gets the files when no mirror works
    channels: int = 1  # native channel count (1 grey, 3 RGB)
    user_data: str = "no"  # whether params' data_path is used: no | optional | required
    user_hint: str = ""  # what data_path may point at, for errors
    flip: bool = True  # a mirrored image is still its class (not for digits: a mirrored 3 is no 3)


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (gzip or raw) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: damaged gzip file ({exc})") from None
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


def _read_digits(folder: Path) -> Splits:
    """scikit-learn's 8x8 digits CSV (64 pixel columns in 0..16, then the label) -> uint8 images."""
    try:
        table = np.loadtxt(folder / "digits.csv.gz", delimiter=",")
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{folder / 'digits.csv.gz'}: not scikit-learn's digits CSV ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{folder / 'digits.csv.gz'}: expected 65 columns, got shape {table.shape}")
    images = np.rint(table[:, :64] * (255 / 16)).clip(0, 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    return {"train": (images, table[:, 64].astype(np.int64))}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays, and nothing that could run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _read_cifar10(folder: Path) -> Splits:
    """CIFAR-10's python batches, read straight from the tar.gz (nothing extracted; links refused)."""
    archive = folder / "cifar-10-python.tar.gz"
    splits: Splits = {}
    with open_tree(archive) as tar:
        members = {PurePosixPath(m).name: m for m in tar.files}
        for split, names in CIFAR_BATCHES.items():
            images, labels = [], []
            for name in names:
                if name not in members:
                    raise ValueError(f"{archive}: no member named {name}; is this the python version?")
                batch = _ArrayUnpickler(io.BytesIO(tar.read(members[name])), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            splits[split] = (np.concatenate(images), np.concatenate(labels))
    return splits


def load_raw(source: Source, folder: Path, label_pattern: str = "") -> RawData:
    """Read a downloaded source as ``RawData`` (array readers get their registry classes)."""
    if source.user_data != "no":
        return source.read(folder, label_pattern)
    return RawData(source.classes, dict(source.read(folder)))


def _sklearn_data_dir() -> str:
    """Where scikit-learn keeps its bundled datasets (a local mirror, no network).

    Found without importing scikit-learn (1.3 s), which every stage would
    otherwise pay for at start-up just to define ``SOURCES``.
    """
    spec = importlib.util.find_spec("sklearn")
    return str(Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data")


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
    "mnist": Source(
        files={  # md5 of the official .gz files (torchvision's list)
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "http://yann.lecun.com/exdb/mnist",
        ),
        classes=tuple(str(d) for d in range(10)),
        read=_read_mnist_like,
        install_hint=(
            "Download the four MNIST .gz files on a machine with internet access, copy them "
            "into a folder here and set FOLDWISE_MIRROR=/that/folder."
        ),
        flip=False,
    ),
    "cifar10": Source(
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},  # official archive md5
        mirrors=("https://www.cs.toronto.edu/~kriz",),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        read=_read_cifar10,
        install_hint=(
            "Download cifar-10-python.tar.gz (the python version) on a machine with internet "
            "access, copy it into a folder here and set FOLDWISE_MIRROR=/that/folder."
        ),
    ),
    "digits": Source(
        files={"digits.csv.gz": "a0339c30a8a5312a1b6f9e5c719dcce5"},  # content md5
        mirrors=(_sklearn_data_dir(),),
        classes=tuple(str(d) for d in range(10)),
        read=_read_digits,
        install_hint="It ships with scikit-learn: reinstall it (`make run` does).",
        flip=False,
    ),
    "dogs-vs-cats": Source(
        # Microsoft's PetImages: ~25,000 JPEGs with a known number of corrupt and
        # zero-byte files. No md5 is pinned (none could be verified offline): the
        # zip's own CRC-32 of every member is checked instead.
        files={"kagglecatsanddogs_5340.zip": None},
        mirrors=("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F",),
        classes=("cat", "dog"),
        read=read_dogs_vs_cats,
        channels=3,
        user_data="optional",
        install_hint=(
            "Download kagglecatsanddogs_5340.zip (Microsoft) or Kaggle's train.zip "
            "(https://www.kaggle.com/c/dogs-vs-cats/data, needs a login) on a machine with "
            "internet access and set data_path in params.yaml to that file."
        ),
        user_hint=(
            "Set data_path to Kaggle's train.zip (https://www.kaggle.com/c/dogs-vs-cats/data, "
            "needs a login) or Microsoft's kagglecatsanddogs_5340.zip, or to a folder where "
            "either is unpacked; or set data_path back to data/own to download the Microsoft archive."
        ),
    ),
    "folder": Source(
        files={},
        mirrors=(),
        classes=(),
        read=read_folder,
        channels=3,
        user_data="required",
        user_hint=(
            "Put your images in data/own/<class>/ (one folder per class), or set data_path to "
            "such a folder, to a flat folder plus label_pattern (a regex whose group is the class, "
            "e.g. '^(cat|dog)\\.' for cat.12.jpg), to a .zip/.tar of either, or to a CSV file "
            "with columns path,label (paths relative to the CSV)."
        ),
    ),
}


def get_source(name: str) -> Source:
    """The registry entry for ``name``; unknown names list the valid ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownName(
            f"unknown dataset {name!r} (params.yaml key 'dataset'); valid: {', '.join(SOURCES)}"
        ) from None

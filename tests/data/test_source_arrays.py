"""Every SOURCES entry, end to end on synthetic files in its real on-disk format.

Files are served over HTTP from 127.0.0.1; download and prepare run through
the real code; the entry's own reader decodes them.
"""

import dataclasses
import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from foldwise.data.download import DownloadError, download
from foldwise.data.prepare import prepare
from foldwise.data.sources import CIFAR_BATCHES, SOURCES, load_raw
from tests.conftest import read_split, write_idx

PER_CLASS = 6  # images per class and source split


def labelled_images(classes: int, size: int, scale: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose top-left pixel encodes the label (label * scale)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), PER_CLASS)
    images = rng.integers(0, scale, size=(len(labels), size, size), dtype=np.uint8)
    images[:, 0, 0] = labels * scale
    return images, labels


def write_mnist_like(root: Path, classes: int) -> dict[str, int]:
    for prefix, seed in (("train", 0), ("t10k", 1)):
        images, labels = labelled_images(classes, 28, 20, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return {"label_scale": 20, "total": 2 * classes * PER_CLASS}


def write_digits(root: Path, classes: int) -> dict[str, int]:
    images, labels = labelled_images(classes, 8, 1, 0)  # values 0..9, within digits' 0..16
    table = np.column_stack([images.reshape(len(labels), 64), labels])
    with gzip.open(root / "digits.csv.gz", "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")
    return {"label_scale": 255 / 16, "total": classes * PER_CLASS}


def write_cifar10(root: Path, classes: int) -> dict[str, int]:
    folder = root / "batches"
    folder.mkdir()
    for split, names in CIFAR_BATCHES.items():
        for i, name in enumerate(names):
            grey, labels = labelled_images(classes, 32, 20, seed=i + (10 if split == "test" else 0))
            rgb = np.stack([grey, grey // 2, 255 - grey], axis=1)  # N x 3 x 32 x 32, channel 0 keeps the label
            batch = {b"data": rgb.reshape(len(labels), 3072), b"labels": labels.tolist(),
                     b"batch_label": name.encode()}
            (folder / name).write_bytes(pickle.dumps(batch))
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return {"label_scale": 20, "total": 6 * classes * PER_CLASS}


WRITERS = {"fashion-mnist": write_mnist_like, "mnist": write_mnist_like, "digits": write_digits,
           "cifar10": write_cifar10}


FILE_SOURCES = {"dogs-vs-cats", "folder"}  # archives of image files: tests/data/test_source_files.py


def test_every_source_has_a_synthetic_writer():
    assert set(WRITERS) | FILE_SOURCES == set(SOURCES) and not set(WRITERS) & FILE_SOURCES


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_source_downloads_over_http_and_prepares(name, tmp_path, http_mirror):
    root, url = http_mirror
    source = SOURCES[name]
    facts = WRITERS[name](root, len(source.classes))
    md5s = {f: hashlib.md5(gzip.decompress((root / f).read_bytes())).hexdigest() for f in source.files}
    entry = dataclasses.replace(source, files=md5s, mirrors=(str(tmp_path / "no-local-copy"), url))

    assert download(entry, tmp_path / "raw") == {f: url for f in source.files}
    manifest = prepare(load_raw(entry, tmp_path / "raw"), entry.classes, tmp_path / "prepared",
                       valid_size=0.2, max_images_per_split=0, seed=0, test_size=0.2)

    assert len(manifest) == facts["total"]
    assert set(manifest["split"]) == {"train", "valid", "test"}
    assert set(manifest["class"]) == set(entry.classes)
    for split in ("train", "valid", "test"):
        loaded = read_split(tmp_path / "prepared", split)
        encoded = np.rint(loaded.images[:, 0, 0, 0].numpy() / facts["label_scale"]).astype(int)
        assert np.array_equal(encoded, loaded.labels.numpy()), f"{split}: labels do not match the images"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_source_rejects_a_corrupted_file(name, tmp_path, http_mirror):
    root, url = http_mirror
    source = SOURCES[name]
    WRITERS[name](root, len(source.classes))
    md5s = {f: hashlib.md5(gzip.decompress((root / f).read_bytes())).hexdigest() for f in source.files}
    victim = sorted(source.files)[0]
    (root / victim).write_bytes(gzip.compress(b"truncated"))
    entry = dataclasses.replace(source, files=md5s, mirrors=(url,))
    with pytest.raises(DownloadError, match=rf"(?s)could not get {victim}.*checksum mismatch.*How to fix"):
        download(entry, tmp_path / "raw")
    assert not (tmp_path / "raw" / victim).exists()


def test_prepare_names_a_raw_file_damaged_since_download(tmp_path):
    """digits.csv.gz cut short in data/raw (a damaged cache object, a bad disk), under a forced
    prepare: one line naming the file as damaged and the fix, not numpy's "use `usecols`"."""
    import gzip
    import os
    import subprocess
    import sys

    from foldwise.data.sources import SOURCES

    root = Path(__file__).resolve().parents[2]
    raw = tmp_path / "data/raw/digits"
    raw.mkdir(parents=True)
    content = gzip.decompress((Path(SOURCES["digits"].mirrors[0]) / "digits.csv.gz").read_bytes())
    damaged = content[: len(content) * 2 // 3] + content[len(content) * 2 // 3 + 40:]  # 40 bytes gone mid-row
    (raw / "digits.csv.gz").write_bytes(gzip.compress(damaged))
    (tmp_path / "params.yaml").write_text("dataset: digits\n")
    done = subprocess.run([sys.executable, str(root / "stages/prepare.py"), "--raw", "data/raw",
                           "--out", "data/prepared"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: data/raw/digits/digits.csv.gz is damaged (md5 "), done.stderr
    assert "`dvc checkout -f data/raw`" in done.stderr and "`dvc repro -f download`" in done.stderr
    assert "usecols" not in done.stderr and not (tmp_path / "data/prepared").exists()

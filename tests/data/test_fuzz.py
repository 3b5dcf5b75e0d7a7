"""Fuzz the readers that take a user's bytes: the image decoder, the archive reader, and the CSV,
IDX and label-pattern readers. Random bytes and mutations of valid inputs (flipped, cut,
inserted bytes) must either work or raise the documented error, never crash; every file a
fuzzed archive holds is either kept or skipped with one of the documented reasons.

Seeded (``derandomize``), so a run in CI tries the same inputs as here.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from foldwise.data.archives import DamagedMember, open_tree
from foldwise.data.images import REASONS, SkipImage, decode
from foldwise.data.prepare import _staged_part
from foldwise.data.readers import FileImages, by_csv, by_pattern
from foldwise.data.sources import read_idx
from tests.conftest import jpeg_bytes, write_idx


def seeded(examples: int) -> settings:
    """Seeded: CI tries the inputs tried here. 2,300 inputs in all: 6.7 s of
    `pytest tests/data/test_fuzz.py` on 2 cores."""
    return settings(derandomize=True, deadline=None, database=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


SEEDS = [jpeg_bytes(90), image_bytes("PNG"), image_bytes("PNG", "LA"), image_bytes("GIF", "P"),
         image_bytes("BMP"), image_bytes("TIFF"), image_bytes("WEBP"), image_bytes("PNG", "I;16")]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes flipped, cut short, or bytes inserted; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind, at = draw(st.sampled_from(["flip", "cut", "insert"])), draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            end = at + draw(st.integers(1, 64)) if draw(st.booleans()) else len(data)
            del data[at:end]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@seeded(500)
@given(data=mutated(SEEDS), channels=st.sampled_from([1, 3]), size=st.sampled_from([0, 6, (5, 7)]))
def test_decode_returns_pixels_or_a_documented_skip(data, channels, size):
    try:
        pixels = decode(data, channels, size)
    except SkipImage as skip:
        assert skip.reason in REASONS
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == channels
    if size:
        assert pixels.shape[:2] == ((size, size) if isinstance(size, int) else size)


def zip_bytes(compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for i, seed in enumerate(SEEDS[:4]):
            archive.writestr(f"{'ab'[i % 2]}/{i}.img", seed)
        archive.writestr("notes.txt", b"not an image")
    return buffer.getvalue()


def tar_bytes(mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for i, seed in enumerate(SEEDS[:4]):
            info = tarfile.TarInfo(f"{'ab'[i % 2]}/{i}.img")
            info.size = len(seed)
            archive.addfile(info, io.BytesIO(seed))
    return buffer.getvalue()


ARCHIVES = {"x.zip": [zip_bytes(zipfile.ZIP_STORED), zip_bytes(zipfile.ZIP_DEFLATED)],
            "x.tar": [tar_bytes("w")], "x.tar.gz": [tar_bytes("w:gz")], "x.tar.xz": [tar_bytes("w:xz")]}


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_archive_reader_opens_or_refuses_and_every_file_is_kept_or_skipped_with_a_reason(name, tmp_path):
    path = tmp_path / name

    @seeded(200)
    @given(data=mutated(ARCHIVES[name]))
    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        try:
            tree = open_tree(path)
        except ValueError:  # UnsafeArchiveError included: a one-line error naming the archive
            return
        with tree:
            names = sorted(tree.files)
            skipped: list[tuple[str, str]] = []
            part = _staged_part(FileImages(tree, names, np.zeros(len(names), dtype=np.int64)),
                                tmp_path / "staging", 3, 6, skipped)
            assert len(part.names) + len(skipped) == len(names)
            assert {reason for _, reason in skipped} <= set(REASONS)
            for member in names:
                try:
                    assert len(tree.read(member, 100)) <= 101
                except DamagedMember:
                    pass

    fuzz()


CSV_SEEDS = [b"path,label\nfiles/000000-a.jpg,cat\nfiles/000001-b.jpg,dog\nfiles/000002-c.jpg,\nmissing.jpg,cat\n"]


def test_csv_labels_read_or_refused_with_a_named_error(tmp_path):
    (tmp_path / "files").mkdir()
    for name in ("000000-a.jpg", "000001-b.jpg", "000002-c.jpg"):
        (tmp_path / "files" / name).write_bytes(b"x")

    @seeded(150)
    @given(data=mutated(CSV_SEEDS))
    def fuzz(data: bytes) -> None:
        (tmp_path / "labels.csv").write_bytes(data)
        with open_tree(tmp_path) as tree:
            try:
                listing = by_csv(tree)
            except ValueError as exc:
                assert "labels.csv" in str(exc)
                return
        assert len(listing.files) == len(listing.labels)
        assert all(reason in ("no label in the CSV", "missing file") for _, reason in listing.skipped)

    fuzz()


def test_user_csv_copied_or_refused_with_a_named_error(tmp_path):
    from foldwise.data.download import copy_user_data

    user = tmp_path / "user"
    user.mkdir()
    (user / "a.jpg").write_bytes(b"x")
    seeds = [b"path,label\na.jpg,cat\nb.jpg,dog\n", b"\xef\xbb\xbfPath,Label\r\n a.jpg ,cat\r\n"]
    runs = iter(range(10**6))

    @seeded(150)
    @given(data=mutated(seeds))
    def fuzz(data: bytes) -> None:
        (user / "labels.csv").write_bytes(data)
        try:
            copy_user_data(user / "labels.csv", tmp_path / f"raw{next(runs)}")
        except ValueError as exc:
            assert str(user / "labels.csv") in str(exc)

    fuzz()


def test_idx_files_decode_or_raise_a_named_error(tmp_path):
    write_idx(tmp_path / "seed-images-idx3-ubyte.gz", np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
    write_idx(tmp_path / "seed-labels-idx1-ubyte.gz", np.array([1, 0], dtype=np.uint8))
    seeds = [(tmp_path / f"seed-{k}-idx{d}-ubyte.gz").read_bytes() for k, d in (("images", 3), ("labels", 1))]
    import gzip

    seeds += [gzip.decompress(s) for s in seeds]
    path = tmp_path / "fuzz-idx.gz"

    @seeded(200)
    @given(data=mutated(seeds))
    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        try:
            array = read_idx(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            return
        assert array.dtype == np.uint8

    fuzz()


@seeded(300)
@given(pattern=st.text(max_size=20), names=st.lists(st.text(max_size=12), max_size=5))
def test_label_patterns_compile_or_name_the_key(pattern, names):
    from foldwise.data.archives import FileTree

    tree = FileTree(Path("."))
    for name in names:
        if name and "/" not in name and not name.startswith("."):
            tree.files[name] = 1
    try:
        listing = by_pattern(tree, pattern)
    except ValueError as exc:
        assert str(exc).startswith("label_pattern: ")
        return
    assert len(listing.files) + len(listing.skipped) == len(tree.files)

"""Your own images: every layout, every kind of bad file, and the errors a user can hit."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foldwise.data.download import copy_user_data, given_user_data
from foldwise.data.prepare import REPORT, SKIPPED, prepare
from foldwise.data.sources import SOURCES, load_raw
from tests.conftest import jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]


def png(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kw)
    return buffer.getvalue()


def messy_folder(root: Path) -> Path:
    """Three class folders of good JPEGs, every kind of trouble, and one class with nothing usable."""
    files = {f"{c}/{i}.jpg": jpeg_bytes(v, size=(40, 30), seed=i)
             for c, v in (("ants", 40), ("bees", 140), ("wasps", 220)) for i in range(8)}
    good = jpeg_bytes(140, seed=50)
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 140, 140, 140] + [0] * 762)
    damaged = bytearray(png(Image.new("RGB", (40, 30), (40, 40, 40))))
    damaged[20] ^= 0xFF
    files.update({
        "ants/corrupt.png": bytes(damaged),
        "bees/truncated.jpg": good[: len(good) // 2],
        "bees/zero.jpg": b"",
        "wasps/notes.txt": b"remember to label the wasps\n",
        "ants/cmyk.jpg": jpeg_bytes(40, size=(40, 30), mode="CMYK"),
        "bees/sixteen.png": png(Image.fromarray(np.full((30, 40), 140 * 257, dtype=np.uint16))),
        "wasps/palette_alpha.png": png(palette, transparency=0),
        "hornets/broken.jpg": b"\xff\xd8\xff\xe0 then nothing",  # its class's only file: a JPEG cut short
    })
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "moths").mkdir()  # an empty class folder
    return root


def test_messy_folder_is_prepared_with_a_report(tmp_path):
    copy_user_data(messy_folder(tmp_path / "mine"), tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.25, 0, 0, 0.25, channels=3)
    raw.close()
    report = json.loads((tmp_path / "prepared" / REPORT).read_text())
    assert report["skipped"] == {"total": 5, "corrupt": 1, "truncated": 2, "empty file": 1, "not an image": 1}
    assert report["empty_classes"] == ["hornets", "moths"]
    assert json.loads((tmp_path / "prepared" / "classes.json").read_text()) == ["ants", "bees", "wasps"]
    assert len(manifest) == 3 * 8 + 3  # CMYK, 16-bit and palette+alpha converted and kept
    assert report["shape"] == [3, 30, 40]
    skipped = (tmp_path / "prepared" / SKIPPED).read_text()
    assert "hornets/broken.jpg,truncated" in skipped and "bees/zero.jpg,empty file" in skipped
    for name, brightness in (("ants/cmyk.jpg", 40), ("bees/sixteen.png", 140), ("wasps/palette_alpha.png", 140)):
        row = manifest[manifest.source == name].iloc[0]
        with Image.open(tmp_path / "prepared" / row.path) as im:
            assert im.mode == "RGB" and abs(np.asarray(im).mean() - brightness) < 25, name
    assert not (tmp_path / "prepared" / ".staging").exists()
    assert not list((tmp_path / "prepared").glob("*.npy"))  # decoded from files: no pixel arrays kept


def test_mixed_sizes_without_image_size_are_explained(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "mine" / c).mkdir(parents=True)
        (tmp_path / "mine" / c / "small.jpg").write_bytes(jpeg_bytes(10, size=(20, 20)))
        (tmp_path / "mine" / c / "large.jpg").write_bytes(jpeg_bytes(10, size=(64, 48)))
    copy_user_data(tmp_path / "mine", tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    with pytest.raises(ValueError, match=r"images differ in size: .* set image_size in params.yaml"):
        prepare(raw, raw.classes, tmp_path / "prepared", 0.25, 0, 0, 0.25, channels=3)


def test_flat_folder_with_a_label_pattern(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for i in range(6):
        (mine / f"beach_{i}.jpg").write_bytes(jpeg_bytes(200, seed=i))
        (mine / f"forest_{i}.jpg").write_bytes(jpeg_bytes(30, seed=i))
    (mine / "IMG_0001.jpg").write_bytes(jpeg_bytes(30))
    copy_user_data(mine, tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw", r"^(?P<label>[a-z]+)_\d+")
    assert raw.classes == ("beach", "forest")
    assert raw.skipped == [("IMG_0001.jpg", "name does not match label_pattern")]
    assert len(raw.splits["train"].names) == 12


def test_csv_of_paths_and_labels(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"{i}.jpg").write_bytes(jpeg_bytes(40 * i))
    (tmp_path / "labels.csv").write_text(
        "path,label\nphotos/0.jpg,dark\nphotos/1.jpg,dark\nphotos/2.jpg,light\n"
        f"{photos / '3.jpg'},light\nphotos/gone.jpg,light\nphotos/0.jpg,\n")
    copy_user_data(tmp_path / "labels.csv", tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    assert raw.classes == ("dark", "light")
    assert raw.splits["train"].labels.tolist() == [0, 0, 1, 1]
    assert sorted(reason for _, reason in raw.skipped) == ["missing file", "no label in the CSV"]


def test_default_own_folder_counts_as_not_given(tmp_path):
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "README.md").write_text("put images here")
    assert given_user_data(tmp_path / "own") is None
    (tmp_path / "own" / "cats").mkdir()
    assert given_user_data(tmp_path / "own") == tmp_path / "own"
    assert given_user_data(tmp_path / "missing.zip") == tmp_path / "missing.zip"  # reported when copied


def stage(project: Path, name: str, params: str) -> subprocess.CompletedProcess:
    (project / "params.yaml").write_text(params)
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), "--out", "data/raw"],
                          cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


@pytest.mark.parametrize("params, expected", [
    ("dataset: imagenet\n", r"unknown dataset 'imagenet' \(params.yaml key 'dataset'\); valid: fashion-mnist, "
                            r"mnist, cifar10, digits, dogs-vs-cats, folder"),
    ("dataset: dogs-vs-cats\ndata_path: /nowhere/train.zip\n",
     r"data_path: /nowhere/train.zip does not exist. Set data_path to Kaggle's train.zip .* needs a login"),
    ("dataset: folder\n", r"dataset 'folder' needs your images, and data_path \(data/own\) holds none yet. "
                          r"Put your images in data/own/<class>/"),
])
def test_stage_errors_are_one_paragraph_that_says_what_to_do(tmp_path, params, expected):
    (tmp_path / "data" / "own").mkdir(parents=True)
    (tmp_path / "data" / "own" / "README.md").write_text("put images here")
    done = stage(tmp_path, "download", params)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert re.search(expected, done.stderr), done.stderr
    assert not (tmp_path / "data" / "raw").exists()


def zeros_zip(path: Path, member: str, size: int) -> None:
    """A deflated zip whose ``member`` is ``size`` bytes of zeros (200 MB compress to ~200 KB),
    written in chunks so the test itself never holds it."""
    import zipfile

    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive, archive.open(member, "w") as out:
        for _ in range(size >> 20):
            out.write(bytes(1 << 20))


def prepared_peak(data, out: Path) -> int:
    """Prepare ``data`` (a folder source, as greyscale) into ``out``: the peak of the memory Python
    allocated meanwhile, in bytes."""
    import tracemalloc

    import sklearn.model_selection  # noqa: F401 - imported before measuring: its import is 40 MB

    tracemalloc.start()
    try:
        prepare(data, data.classes, out, 0.25, 0, 0, 0.25, channels=1)
        data.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("where", ["zip", "folder"])
def test_a_file_over_the_size_cap_is_skipped_as_too_large_without_being_read(tmp_path, where):
    """200 MB of zeros named cat/huge.jpg (a zip member of ~200 KB): skipped "too large" from its
    listed size, so memory stays far below it (on main it was read whole: 441 MB at the peak)."""
    import zipfile

    from foldwise.data.images import MAX_FILE_BYTES

    files = {f"{c}/{i}.jpg": jpeg_bytes(v, size=(16, 16), seed=i) for c, v in (("cat", 40), ("dog", 200))
             for i in range(6)}
    raw = tmp_path / "raw"
    if where == "zip":
        (raw / "folder").mkdir(parents=True)
        with zipfile.ZipFile(raw / "folder/own.zip", "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        zeros_zip(raw / "folder/own.zip", "cat/huge.jpg", 200 << 20)
    else:
        for name, data in files.items():
            (raw / "folder/images" / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / "folder/images" / name).write_bytes(data)
        with open(raw / "folder/images/cat/huge.jpg", "wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    peak = prepared_peak(load_raw(SOURCES["folder"], raw / "folder"), tmp_path / "prepared")
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB held"
    report = json.loads((tmp_path / "prepared" / REPORT).read_text())
    assert report["skipped"] == {"total": 1, "too large": 1}
    assert "cat/huge.jpg,too large" in (tmp_path / "prepared" / SKIPPED).read_text()


def test_the_cap_is_inclusive_and_a_file_grown_since_listing_is_read_no_further_than_it(tmp_path):
    """A file of exactly the cap is read (and found not to be an image); one listed at 10 bytes that
    grew to 400 MB before prepare read it is read to the cap and one byte, not whole."""
    from foldwise.data.images import MAX_FILE_BYTES

    images = tmp_path / "raw/folder/images"
    for c, v in (("cat", 40), ("dog", 200)):
        (images / c).mkdir(parents=True)
        for i in range(6):
            (images / c / f"{i}.jpg").write_bytes(jpeg_bytes(v, size=(16, 16), seed=i))
    with open(images / "cat/exact.jpg", "wb") as f:
        f.truncate(MAX_FILE_BYTES)  # sparse: no disk used
    (images / "dog/grows.jpg").write_bytes(bytes(10))
    data = load_raw(SOURCES["folder"], tmp_path / "raw/folder")
    with open(images / "dog/grows.jpg", "r+b") as f:
        f.truncate(400 << 20)
    peak = prepared_peak(data, tmp_path / "prepared")
    assert peak < 200 << 20, f"{peak / 2**20:.0f} MiB held"
    skipped = (tmp_path / "prepared" / SKIPPED).read_text()
    assert "cat/exact.jpg,not an image" in skipped and "dog/grows.jpg,too large" in skipped


def test_an_image_declaring_more_pixels_than_the_cap_is_skipped_before_decoding():
    """A 9000 x 9000 bilevel PNG is a few KB on disk and 81 MB decoded: refused from its header."""
    import tracemalloc

    from foldwise.data.images import MAX_PIXELS, SkipImage, decode

    huge = png(Image.new("1", (9000, 9000)))
    assert len(huge) < 1 << 20 and 9000 * 9000 > MAX_PIXELS
    tracemalloc.start()
    try:
        with pytest.raises(SkipImage) as skip:
            decode(huge, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert skip.value.reason == "too large" and "9000x9000 pixels" in str(skip.value)
    assert peak < 16 << 20
    assert decode(png(Image.new("L", (4096, 4096))), 1).shape == (4096, 4096, 1)  # under the cap: kept

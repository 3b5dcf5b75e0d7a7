"""The file-based registry entries (dogs-vs-cats, folder) on synthetic archives in their real layouts.

Archives are served over HTTP from 127.0.0.1 and fetched by the real
downloader (as the Microsoft mirror, or as a user fetching Kaggle's train.zip
and pointing data_path at it); prepare then runs through the real code.
Labels are encoded as brightness: cats dark, dogs bright.
"""

import dataclasses
import json
import urllib.request

import numpy as np
import pytest

from foldwise.data.download import DownloadError, copy_user_data, download, fetch_file
from foldwise.data.prepare import REPORT, prepare
from foldwise.data.sources import SOURCES, load_raw
from tests.conftest import jpeg_bytes, read_split, write_zip

PER_CLASS = 10
BRIGHTNESS = {"cat": 50, "dog": 200}


def pet_images() -> dict[str, bytes]:
    """Microsoft's PetImages layout, with the kinds of broken files the real archive has."""
    members = {f"PetImages/{c.title()}/{i}.jpg": jpeg_bytes(v, seed=i) for c, v in BRIGHTNESS.items()
               for i in range(PER_CLASS)}
    good = jpeg_bytes(200, seed=99)
    members.update({
        "PetImages/Cat/666.jpg": b"",  # zero bytes
        "PetImages/Dog/11702.jpg": good[: len(good) // 2],  # truncated
        "PetImages/Cat/Thumbs.db": b"\xd0\xcf\x11\xe0 not an image",
        "PetImages/Dog/cmyk.jpg": jpeg_bytes(200, seed=7, mode="CMYK"),  # usable after conversion
    })
    return members


def kaggle_train() -> dict[str, bytes]:
    """Kaggle's train.zip: one flat folder, the class in the file name."""
    return {f"train/{c}.{i}.jpg": jpeg_bytes(v, seed=i) for c, v in BRIGHTNESS.items() for i in range(PER_CLASS)}


def check_brightness(prepared, classes) -> None:
    for split in ("train", "valid", "test"):
        images = read_split(prepared, split)
        means = images.images.float().mean(dim=(1, 2, 3)).numpy()
        expected = np.array([BRIGHTNESS[classes[i]] for i in images.labels.numpy()])
        assert np.all(np.abs(means - expected) < 40), f"{split}: labels do not match the images"


def test_pet_images_from_the_mirror_skip_broken_files_and_report_them(tmp_path, http_mirror):
    root, url = http_mirror
    write_zip(root / "kagglecatsanddogs_5340.zip", pet_images())
    entry = dataclasses.replace(SOURCES["dogs-vs-cats"], mirrors=(str(tmp_path / "no-local-copy"), url))
    assert download(entry, tmp_path / "raw") == {"kagglecatsanddogs_5340.zip": url}
    raw = load_raw(entry, tmp_path / "raw")
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, 0, 0.2, channels=3, image_size=16)
    raw.close()
    report = json.loads((tmp_path / "prepared" / REPORT).read_text())
    assert report["skipped"] == {"total": 3, "empty file": 1, "truncated": 1, "not an image": 1}
    assert len(manifest) == 2 * PER_CLASS + 1  # + the CMYK JPEG, converted
    assert report["shape"] == [3, 16, 16] and report["classes"] == 2
    assert sorted({p.split("/")[1] for p in manifest.path}) == ["cat", "dog"]
    check_brightness(tmp_path / "prepared", ["cat", "dog"])


def test_kaggle_train_zip_given_by_the_user(tmp_path, http_mirror):
    root, url = http_mirror
    write_zip(root / "train.zip", kaggle_train())
    fetch_file("train.zip", None, [url], tmp_path / "Downloads")  # what the user's browser did
    copy_user_data(tmp_path / "Downloads" / "train.zip", tmp_path / "raw")
    raw = load_raw(SOURCES["dogs-vs-cats"], tmp_path / "raw")
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, 0, 0.2, channels=3, image_size=[12, 16])
    raw.close()
    assert manifest.groupby("class").size().to_dict() == {"cat": PER_CLASS, "dog": PER_CLASS}
    assert set(manifest.source) == set(kaggle_train())
    assert json.loads((tmp_path / "prepared" / REPORT).read_text())["shape"] == [3, 12, 16]
    check_brightness(tmp_path / "prepared", ["cat", "dog"])


def test_damaged_archive_fails_its_crc_check_and_is_not_kept(tmp_path, http_mirror):
    root, url = http_mirror
    members = pet_images()
    path = write_zip(root / "kagglecatsanddogs_5340.zip", members)
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(members["PetImages/Cat/3.jpg"])  # stored uncompressed: damage its bytes
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    entry = dataclasses.replace(SOURCES["dogs-vs-cats"], mirrors=(url,))
    with pytest.raises(DownloadError, match=r"(?s)PetImages/Cat/3.jpg fails its CRC-32 check.*How to fix"):
        download(entry, tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


def test_layout_that_is_not_dogs_vs_cats_is_explained(tmp_path):
    write_zip(tmp_path / "raw" / "test1.zip", {f"test1/{i}.jpg": jpeg_bytes(100) for i in range(3)})
    with pytest.raises(ValueError, match=r"neither Dogs vs. Cats layout found.*test1.zip has no labels"):
        load_raw(SOURCES["dogs-vs-cats"], tmp_path / "raw")


def test_folder_zip_served_over_http_with_a_damaged_member(tmp_path, http_mirror):
    """Your own images as a zip of class folders (one wrapping folder); a damaged member is skipped."""
    root, url = http_mirror
    members = {f"holiday/{c}/{i}.jpg": jpeg_bytes(v, seed=i) for c, v in BRIGHTNESS.items() for i in range(PER_CLASS)}
    path = write_zip(root / "holiday.zip", members)
    data = bytearray(path.read_bytes())
    data[bytes(data).index(members["holiday/dog/4.jpg"]) + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "Downloads").mkdir()
    urllib.request.urlretrieve(f"{url}/holiday.zip", tmp_path / "Downloads" / "holiday.zip")  # a browser
    copy_user_data(tmp_path / "Downloads" / "holiday.zip", tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    assert raw.classes == ("cat", "dog")
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, 0, 0.2, channels=3)
    raw.close()
    report = json.loads((tmp_path / "prepared" / REPORT).read_text())
    assert report["skipped"] == {"total": 1, "corrupt": 1} and len(manifest) == 2 * PER_CLASS - 1
    check_brightness(tmp_path / "prepared", ["cat", "dog"])

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from foldwise.prepare import carve_split, class_dirname, prepare, stratified_subset
from tests.conftest import CLASSES, make_images


@pytest.fixture
def splits():
    return {"train": make_images(120, seed=1), "test": make_images(30, seed=2)}


def test_class_names_stay_readable_and_flat():
    assert class_dirname("T-shirt/top") == "T-shirt_top"
    assert class_dirname("Ankle boot") == "Ankle boot"
    with pytest.raises(ValueError, match="no usable characters"):
        class_dirname("//")


def test_tree_manifest_and_stratified_split(tmp_path, splits):
    manifest = prepare(splits, tuple(CLASSES), tmp_path, valid_size=30, max_images_per_split=0, seed=0)
    assert manifest.groupby("split").size().to_dict() == {"test": 30, "train": 90, "valid": 30}
    assert set(manifest[manifest.split == "valid"]["label"].value_counts()) == {10}  # stratified
    assert (tmp_path / "train" / "T-shirt_top").is_dir() and not (tmp_path / "train" / "T-shirt").exists()
    assert all((tmp_path / p).is_file() for p in manifest["path"])
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASSES
    row = manifest.iloc[0]
    assert row["path"].startswith(f"{row['split']}/") and CLASSES[row["label"]] == row["class"]
    assert not set(manifest[manifest.split == "train"].path) & set(manifest[manifest.split == "valid"].path)


def test_manifest_md5_is_the_pixel_content(tmp_path, splits):
    manifest = prepare(splits, tuple(CLASSES), tmp_path, 30, 0, seed=0)
    for row in manifest.sample(5, random_state=0).itertuples():
        with Image.open(tmp_path / row.path) as im:
            pixels = np.asarray(im)[..., None]
        assert hashlib.md5(pixels.tobytes()).hexdigest() == row.md5
    changed = {"train": (splits["train"][0].copy(), splits["train"][1]), "test": splits["test"]}
    changed["train"][0][0, 0, 0, 0] ^= 1  # one pixel of one image
    again = prepare(changed, tuple(CLASSES), tmp_path / "again", 30, 0, seed=0)
    assert not again.equals(manifest) and (again.md5 != manifest.md5).sum() == 1


def test_same_seed_same_split_other_seed_other_split(tmp_path, splits):
    a = prepare(splits, tuple(CLASSES), tmp_path / "a", 0.25, 0, seed=3)
    b = prepare(splits, tuple(CLASSES), tmp_path / "b", 0.25, 0, seed=3)
    c = prepare(splits, tuple(CLASSES), tmp_path / "c", 0.25, 0, seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_subset_keeps_class_balance(tmp_path, splits):
    manifest = prepare(splits, tuple(CLASSES), tmp_path, 30, max_images_per_split=12, seed=0)
    assert manifest.groupby("split").size().to_dict() == {"test": 12, "train": 12, "valid": 12}
    assert set(manifest.groupby(["split", "label"]).size()) == {4}
    labels = np.arange(100) % 4
    assert len(stratified_subset(labels, 0, 0)) == 100


def test_sizes_too_large_are_explained():
    with pytest.raises(ValueError, match="valid_size=500 leaves no training images"):
        carve_split(np.arange(100) % 2, 500, 0)
    with pytest.raises(ValueError, match="test_size=1 cannot be split stratified from 100 images"):
        carve_split(np.arange(100) % 2, 1, 0, "test_size")


def test_a_source_without_test_split_gets_one_carved_out(tmp_path, splits):
    manifest = prepare({"train": splits["train"]}, tuple(CLASSES), tmp_path, 0.25, 0, seed=0, test_size=30)
    assert manifest.groupby("split").size().to_dict() == {"test": 30, "train": 67, "valid": 23}
    assert set(manifest[manifest.split == "test"]["label"].value_counts()) == {10}
    assert manifest.path.is_unique  # each source image lands in exactly one split


def test_splits_over_the_pixel_limit_keep_only_their_pngs(tmp_path, splits, monkeypatch):
    import foldwise.prepare as prepare_module
    from foldwise.data import decode_all, split_files

    monkeypatch.setattr(prepare_module, "PIXELS_MAX_BYTES", 30 * 12 * 12)  # 30 grey 12x12 images
    prepare(splits, tuple(CLASSES), tmp_path, valid_size=30, max_images_per_split=0, seed=0)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["test.npy", "valid.npy"]  # train has 90
    train = split_files(tmp_path, "train")
    assert train.pixels is None and decode_all(train).shape == (90, 1, 12, 12)

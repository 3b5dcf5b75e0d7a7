import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldwise.data.prepare import REPORT, SKIPPED, carve_split, class_dirname, prepare, stratified_subset
from tests.conftest import CLASSES, make_images


def assert_every_image_is_its_source(out_dir, manifest, originals, test_sources=None):
    """Every written image holds exactly the pixels of the source image its row names, and the
    test split holds only ``test_sources`` (default: any) and no source image is in two splits."""
    assert manifest.source.is_unique, manifest[manifest.source.duplicated(keep=False)]
    for row in manifest.itertuples():
        with Image.open(out_dir / row.path) as im:
            pixels = np.asarray(im)
        expected = originals[row.source]
        np.testing.assert_array_equal(pixels.reshape(expected.shape), expected, err_msg=row.path)
    if test_sources is not None:
        assert set(manifest[manifest.split == "test"].source) <= set(test_sources)
        assert not set(manifest[manifest.split != "test"].source) & set(test_sources)


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
    # every image once, in one split (``path`` starts with the split's name: only ``source`` can tell)
    assert manifest.source.is_unique and len(manifest) == 150


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


def test_a_fraction_carves_the_nearest_count_and_the_same_images_as_that_count():
    labels = np.arange(60_000) % 10
    rest, valid = carve_split(labels, 0.16667, 0)  # scikit-learn alone would take ceil(10000.2) = 10001
    assert len(valid) == 10_000 and len(rest) == 50_000
    assert np.array_equal(valid, carve_split(labels, 10_000, 0)[1])
    assert len(carve_split(np.arange(90) % 3, 0.25, 0)[1]) == 23  # 22.5: a half rounds up
    assert len(carve_split(np.arange(1438) % 10, 0.16667, 0)[1]) == 240  # digits' train pool
    with pytest.raises(ValueError, match=r"^valid_size=0\.001 carves no image out of 100; use a larger fraction"):
        carve_split(np.arange(100) % 2, 0.001, 0)


def test_a_source_without_test_split_gets_one_carved_out(tmp_path, splits):
    manifest = prepare({"train": splits["train"]}, tuple(CLASSES), tmp_path, 0.25, 0, seed=0, test_size=30)
    assert manifest.groupby("split").size().to_dict() == {"test": 30, "train": 67, "valid": 23}
    assert set(manifest[manifest.split == "test"]["label"].value_counts()) == {10}
    assert manifest.source.is_unique and len(manifest) == 120  # each source image lands in exactly one split
    assert_every_image_is_its_source(tmp_path, manifest, {f"train:{i}": im for i, im in enumerate(splits["train"][0])})


def test_splits_over_the_pixel_limit_keep_only_their_pngs(tmp_path, splits, monkeypatch):
    import foldwise.data.prepare as prepare_module
    from foldwise.data.layout import decode_all, split_files

    monkeypatch.setattr(prepare_module, "PIXELS_MAX_BYTES", 30 * 12 * 12)  # 30 grey 12x12 images
    prepare(splits, tuple(CLASSES), tmp_path, valid_size=30, max_images_per_split=0, seed=0)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["test.npy", "valid.npy"]  # train has 90
    train = split_files(tmp_path, "train")
    assert train.pixels is None and decode_all(train).shape == (90, 1, 12, 12)


def test_a_sources_own_test_images_stay_test_and_every_image_is_its_source(tmp_path, splits):
    manifest = prepare(splits, tuple(CLASSES), tmp_path, valid_size=30, max_images_per_split=0, seed=0)
    originals = {f"train:{i}": im for i, im in enumerate(splits["train"][0])}
    tests = {f"test:{i}": im for i, im in enumerate(splits["test"][0])}
    assert_every_image_is_its_source(tmp_path, manifest, {**originals, **tests}, test_sources=tests)
    assert set(manifest[manifest.split == "test"].source) == set(tests)  # all of them, nothing else
    labels = {**{f"train:{i}": y for i, y in enumerate(splits["train"][1])},
              **{f"test:{i}": y for i, y in enumerate(splits["test"][1])}}
    assert all(labels[row.source] == row.label for row in manifest.itertuples())


def grey_pngs(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` distinct 12x12 grey images per class, named ``<class>/<i>.png``."""
    rng = np.random.default_rng(seed)
    return {f"{c}/{i}.png": rng.integers(0, 256, (12, 12), dtype=np.uint8) for c in ("ants", "bees") for i in range(n)}


def write_pngs(root, images):
    for name, pixels in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
    return root


def read_own_folder(tmp_path, images):
    from foldwise.data.download import copy_user_data
    from foldwise.data.sources import SOURCES, load_raw

    copy_user_data(write_pngs(tmp_path / "mine", images), tmp_path / "raw")
    return load_raw(SOURCES["folder"], tmp_path / "raw")


@pytest.mark.parametrize("kind", ["folder", "csv", "zip"])
def test_file_sources_never_put_a_test_image_in_train_or_valid(tmp_path, kind):
    """Folders, CSV lists and archives have no test split of their own: prepare carves one out, and no
    file may land in two splits or be written with another file's pixels."""
    from foldwise.data.download import copy_user_data
    from foldwise.data.sources import SOURCES, load_raw
    from tests.conftest import write_zip

    images = grey_pngs(15, seed=4)
    mine = write_pngs(tmp_path / "mine", images)
    if kind == "csv":
        (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
            f"{mine / name},{name.split('/')[0]}\n" for name in images))
        given = tmp_path / "labels.csv"
    elif kind == "zip":
        given = write_zip(tmp_path / "mine.zip", {f"mine/{n}": (mine / n).read_bytes() for n in images})
    else:
        given = mine
    copy_user_data(given, tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    files = raw.splits["train"]
    # the reader's name for each file (the download stage may rename them) -> the pixels it holds
    originals = {}
    for name in files.names:
        with Image.open(io.BytesIO(files.tree.read(name))) as im:
            originals[name] = np.asarray(im)
    assert sorted(a.tobytes() for a in originals.values()) == sorted(a.tobytes() for a in images.values())
    names = list(files.names)
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, seed=0, test_size=0.2, channels=1)
    raw.close()
    assert manifest.groupby("split").size().to_dict() == {"test": 6, "train": 19, "valid": 5}
    assert_every_image_is_its_source(tmp_path / "prepared", manifest, originals)
    assert set(manifest.source) == set(names)


def test_subsets_take_every_image_when_asked_for_as_many_and_follow_the_seed():
    labels = np.arange(100) % 4
    assert list(stratified_subset(labels, 100, 0)) == list(range(100))
    assert len(stratified_subset(np.zeros(10, dtype=int), 1, 0)) == 1
    a, b = stratified_subset(labels, 20, 0), stratified_subset(labels, 20, 1)
    assert np.array_equal(a, stratified_subset(labels, 20, 0)) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"^valid_size=100 leaves no training images: the set it is carved from "
                                         r"has 100; use a smaller count or a fraction such as 0\.2$"):
        carve_split(labels, 100, 0)


def test_files_written_with_the_files_on_disk_matching_the_manifest(tmp_path, splits):
    from foldwise.data.layout import read_manifest

    manifest = prepare(splits, tuple(CLASSES), tmp_path, valid_size=30, max_images_per_split=0, seed=0)
    # <split>/<class folder>/<origin>-<index>.png, origin and index from source
    for path, split, name, source in zip(manifest.path, manifest.split, manifest["class"], manifest.source):
        origin, index = source.split(":")
        assert path == f"{split}/{class_dirname(name)}/{origin}-{int(index):05d}.png"
    pd.testing.assert_frame_equal(read_manifest(tmp_path), manifest)
    assert list(manifest.columns) == ["path", "label", "class", "split", "md5", "source"]
    assert (tmp_path / "classes.json").read_text() == json.dumps(CLASSES, indent=2) + "\n"
    assert json.loads((tmp_path / REPORT).read_text()) == {
        "images": {"test": 30, "train": 90, "valid": 30}, "classes": 3, "shape": [1, 12, 12],
        "skipped": {"total": 0}, "empty_classes": []}
    assert (tmp_path / SKIPPED).read_text() == "file,reason\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "classes.json", "manifest.csv", "report.json", "skipped.csv", "test", "test.npy", "train", "train.npy",
        "valid", "valid.npy"]  # no staging folder left


def test_arrays_are_converted_to_the_channels_and_size_asked_for(tmp_path, splits):
    manifest = prepare(splits, tuple(CLASSES), tmp_path, 30, 0, seed=0, channels=3, image_size=[6, 8])
    with Image.open(tmp_path / manifest.path.iloc[0]) as im:
        assert im.mode == "RGB" and im.size == (8, 6)  # image_size is [height, width]
    assert json.loads((tmp_path / REPORT).read_text())["shape"] == [3, 6, 8]
    assert np.load(tmp_path / "train.npy").shape == (90, 3, 6, 8)


def test_the_default_test_split_is_a_fifth_and_sizes_are_named_in_errors(tmp_path, splits):
    manifest = prepare({"train": splits["train"]}, tuple(CLASSES), tmp_path / "a", 0.25, 0, seed=0)
    assert manifest.groupby("split").size().to_dict() == {"test": 24, "train": 72, "valid": 24}
    with pytest.raises(ValueError, match=r"^test_size=120 leaves no training images"):
        prepare({"train": splits["train"]}, tuple(CLASSES), tmp_path / "b", 0.25, 0, seed=0, test_size=120)
    with pytest.raises(ValueError, match=r"^valid_size=120 leaves no training images"):
        prepare(splits, tuple(CLASSES), tmp_path / "c", 120, 0, seed=0)


def test_subsets_per_split_follow_the_seed(tmp_path, splits):
    a = prepare(splits, tuple(CLASSES), tmp_path / "a", 30, 12, seed=0)
    b = prepare(splits, tuple(CLASSES), tmp_path / "b", 30, 12, seed=1)
    assert set(a[a.split == "test"].source) != set(b[b.split == "test"].source)
    assert a.equals(prepare(splits, tuple(CLASSES), tmp_path / "a2", 30, 12, seed=0))
    carved = [prepare({"train": splits["train"]}, tuple(CLASSES), tmp_path / f"c{i}", 0.25, 0, seed=0) for i in (0, 1)]
    assert carved[0].equals(carved[1])  # the carved test split too


def test_class_names_that_collide_as_folders_are_explained(tmp_path, splits):
    with pytest.raises(ValueError, match=r"^class names \('a/b', 'a_b', 'c'\) collide as folder names "
                                         r"\['a_b', 'a_b', 'c'\]$"):
        prepare(splits, ("a/b", "a_b", "c"), tmp_path, 30, 0, seed=0)
    assert class_dirname(" .x. ") == "x" and class_dirname("X-ray_") == "X-ray"


def test_files_are_resized_and_made_rgb_by_default_with_their_md5_in_the_manifest(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"{c}/{i}.png": rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8) for c in "ab" for i in range(5)}
    images["a/grey.png"] = rng.integers(0, 256, (9, 9), dtype=np.uint8)
    raw = read_own_folder(tmp_path, images)
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, seed=0, test_size=0.2, image_size=[8, 6])
    raw.close()
    for row in manifest.itertuples():
        with Image.open(tmp_path / "prepared" / row.path) as im:
            assert im.mode == "RGB" and im.size == (6, 8)
            assert hashlib.md5(np.asarray(im).tobytes()).hexdigest() == row.md5
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == [
        "classes.json", "manifest.csv", "report.json", "skipped.csv", "test", "train", "valid"]  # staging removed
    report = json.loads((tmp_path / "prepared" / REPORT).read_text())
    assert (tmp_path / "prepared" / REPORT).read_text() == json.dumps(report, indent=2) + "\n"


def test_files_of_different_sizes_are_named_with_both_sizes(tmp_path):
    images = {"a/0.png": np.zeros((10, 12), np.uint8), "a/1.png": np.zeros((6, 8), np.uint8),
              "b/0.png": np.zeros((10, 12), np.uint8)}
    raw = read_own_folder(tmp_path, images)
    with pytest.raises(ValueError, match=r"^images differ in size: a/1\.png is 8x6 but a/0\.png is 12x10 "
                                         r"\(width x height\); set image_size"):
        prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, seed=0, test_size=0.2, channels=1)


def test_damaged_archive_members_are_skipped_as_corrupt_and_the_rest_kept(tmp_path):
    from foldwise.data.download import copy_user_data
    from foldwise.data.sources import SOURCES, load_raw
    from tests.conftest import write_zip

    rng = np.random.default_rng(1)
    members = {}
    for name in [f"{c}/{i}.png" for c in "ab" for i in range(6)]:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buffer, "PNG")
        members[name] = buffer.getvalue()
    archive = write_zip(tmp_path / "mine.zip", members)
    data = bytearray(archive.read_bytes())
    start = data.index(members["a/0.png"])
    data[start + 40] ^= 0xFF  # a/0.png, the first member: its CRC no longer matches
    archive.write_bytes(bytes(data))
    copy_user_data(archive, tmp_path / "raw")
    raw = load_raw(SOURCES["folder"], tmp_path / "raw")
    manifest = prepare(raw, raw.classes, tmp_path / "prepared", 0.2, 0, seed=0, test_size=0.2, channels=1)
    raw.close()
    assert len(manifest) == 11 and "a/0.png" not in set(manifest.source)
    assert (tmp_path / "prepared" / SKIPPED).read_text() == "file,reason\na/0.png,corrupt\n"


def test_only_classes_without_any_image_are_dropped(tmp_path, splits):
    images = splits["test"][0]
    test = (images[:3], np.array([0, 1, 3]))  # Dress (3): one image, in the test split only; Coat (4, the last): none
    manifest = prepare({"train": splits["train"], "test": test}, (*CLASSES, "Dress", "Coat"), tmp_path, 30, 0, seed=0)
    assert json.loads((tmp_path / "classes.json").read_text()) == [*CLASSES, "Dress"]
    assert json.loads((tmp_path / REPORT).read_text())["empty_classes"] == ["Coat"]
    assert (manifest["class"] == "Dress").sum() == 1
    with pytest.raises(ValueError, match=r"^only 1 class\(es\) have usable images \(\['T-shirt/top'\]\); a classifier "
                                         r"needs at least 2\. See the skipped files above, or add images of other "
                                         r"classes\.$"):
        prepare({"train": (images, np.zeros(len(images), dtype=np.int64))}, tuple(CLASSES), tmp_path / "one", 3, 0,
                seed=0)

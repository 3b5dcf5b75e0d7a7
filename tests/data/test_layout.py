import numpy as np
import pytest
import torch

from foldwise.data.batches import uint8_chunks
from foldwise.data.layout import decode_all, split_files
from foldwise.data.prepare import prepare
from tests.conftest import CLASSES, make_images, read_split


def test_a_prepared_split_decodes_to_exactly_the_prepared_pixels(tmp_path):
    rgb = make_images(40, channels=3, seed=5)
    manifest = prepare({"train": rgb, "test": rgb}, tuple(CLASSES), tmp_path, 10, 0, seed=0)
    loaded = read_split(tmp_path, "valid")
    rows = manifest[manifest.split == "valid"]
    index = [int(p.rsplit("-", 1)[1][:-4]) for p in rows.path]
    expected = torch.from_numpy(rgb[0][index]).permute(0, 3, 1, 2)
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (10, 3, 12, 12)
    assert torch.equal(loaded.images, expected)
    assert np.array_equal(loaded.labels.numpy(), rows.label.to_numpy())
    assert loaded.classes == CLASSES


def test_missing_manifest_and_unknown_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the prepare stage first"):
        split_files(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, valid, test"):
        split_files(tmp_path, "val")


def test_prepared_pixel_arrays_hold_the_same_images_as_the_pngs(tmp_path):
    rgb = make_images(40, channels=3, seed=5)
    prepare({"train": rgb, "test": rgb}, tuple(CLASSES), tmp_path, 10, 0, seed=0)
    for split in ("train", "valid", "test"):
        files = split_files(tmp_path, split)
        assert files.pixels == tmp_path / f"{split}.npy"
        cached = decode_all(files)
        files.pixels = None
        assert torch.equal(cached, decode_all(files))  # decoded from the PNG files, in manifest order
    files = split_files(tmp_path, "train")
    assert torch.equal(torch.cat(list(uint8_chunks(files, pixels=12 * 12 * 3 * 7))), decode_all(files))


def test_a_pixel_array_that_disagrees_with_the_manifest_is_named(tmp_path):
    prepare({"train": make_images(40, seed=5), "test": make_images(10, seed=6)}, tuple(CLASSES), tmp_path, 10, 0, 0)
    np.save(tmp_path / "valid.npy", np.zeros((3, 1, 12, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"valid\.npy: uint8 \(3, 1, 12, 12\) does not hold the 10 images.*prepare"):
        decode_all(split_files(tmp_path, "valid"))


def test_images_at_reads_a_splits_images_by_position_without_importing_torch(tmp_path):
    """The plots stage's galleries: importing torch would add about 2 s to each plots run."""
    import subprocess
    import sys

    prepare({"train": make_images(40, seed=5), "test": make_images(10, seed=6)}, tuple(CLASSES), tmp_path, 10, 0, 0)
    indices = np.array([7, 0, 3])
    expected = decode_all(split_files(tmp_path, "test"))[torch.as_tensor(indices)].numpy()
    script = ("import sys; import numpy as np; from foldwise.data.layout import images_at; "
              f"a = images_at({str(tmp_path)!r}, 'test', np.array({indices.tolist()})); "
              f"e = images_at({str(tmp_path)!r}, 'test', np.array([], dtype=int)); "
              "np.save(sys.argv[1], a); print(e.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "got.npy")], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["(0,", "1,", "12,", "12)", "False"]
    assert np.array_equal(np.load(tmp_path / "got.npy"), expected)

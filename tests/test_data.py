import numpy as np
import pytest
import torch

from foldwise.data import load_split
from foldwise.prepare import prepare
from tests.conftest import CLASSES, make_images


def test_load_split_returns_exactly_the_prepared_pixels(tmp_path):
    rgb = make_images(40, channels=3, seed=5)
    manifest = prepare({"train": rgb, "test": rgb}, tuple(CLASSES), tmp_path, 10, 0, seed=0)
    loaded = load_split(tmp_path, "valid")
    rows = manifest[manifest.split == "valid"]
    index = [int(p.rsplit("-", 1)[1][:-4]) for p in rows.path]
    expected = torch.from_numpy(rgb[0][index]).permute(0, 3, 1, 2)
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (10, 3, 12, 12)
    assert torch.equal(loaded.images, expected)
    assert np.array_equal(loaded.labels.numpy(), rows.label.to_numpy())
    assert loaded.classes == CLASSES


def test_missing_manifest_and_unknown_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the prepare stage first"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, valid, test"):
        load_split(tmp_path, "val")

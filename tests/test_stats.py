import numpy as np
import pytest
import torch

from foldwise.stats import compute_stats


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_float64_reference_with_chunking(channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, channels, 9, 7), dtype=np.uint8)
    stats = compute_stats(torch.from_numpy(images), chunk=5)
    ref = images.astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], ref.std(axis=(0, 2, 3)), rtol=1e-9)
    assert stats["pixels_per_channel"] == 37 * 9 * 7


def test_rejects_empty_or_wrong_rank():
    with pytest.raises(ValueError, match="non-empty N x C x H x W"):
        compute_stats(torch.zeros(0, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError):
        compute_stats(torch.zeros(4, 4, dtype=torch.uint8))

import numpy as np
import pytest
import torch

from foldwise.data.normalize import compute_stats, to_inputs


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


@pytest.mark.parametrize("channels", [1, 3])
def test_streamed_from_prepared_files_equals_the_in_memory_reference(tmp_path, channels):
    """normalize's path: PNG files read back in chunks by DataLoader workers."""
    from foldwise.data.batches import uint8_chunks
    from foldwise.data.layout import split_files
    from foldwise.data.prepare import prepare
    from tests.conftest import CLASSES, make_images

    data = make_images(60, channels=channels, seed=3)
    prepare({"train": data, "test": data}, tuple(CLASSES), tmp_path, 15, 0, seed=0)
    files = split_files(tmp_path, "train")
    streamed = compute_stats(uint8_chunks(files, pixels=7 * 144 * channels, workers=2))  # chunks of 7
    ref = np.stack([files[i][0].numpy() for i in range(len(files))]).astype(np.float64) / 255  # N x C x H x W
    ref = ref.transpose(0, 2, 3, 1)
    assert ref.shape == (45, 12, 12, channels)
    np.testing.assert_allclose(streamed["mean"], ref.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(streamed["std"], ref.std(axis=(0, 1, 2)), rtol=1e-9)


def test_bad_chunks_are_named():
    with pytest.raises(ValueError, match=r"^expected uint8 N x C x H x W chunks, got torch.float32 \(2, 1, 3, 3\)$"):
        compute_stats(iter([torch.zeros(2, 1, 3, 3)]))
    with pytest.raises(ValueError, match=r"^expected uint8 N x C x H x W chunks, got torch.uint8 \(2, 3, 3\)$"):
        compute_stats(iter([torch.zeros(2, 3, 3, dtype=torch.uint8)]))
    with pytest.raises(ValueError, match=r"^chunks mix 1 and 3 channels$"):
        compute_stats(iter([torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(2, 3, 3, 3, dtype=torch.uint8)]))
    for empty in ([], [torch.zeros(0, 1, 3, 3, dtype=torch.uint8)]):
        with pytest.raises(ValueError, match=r"^no images to compute statistics from$"):
            compute_stats(iter(empty))


def test_one_pixel_and_constant_images():
    one = compute_stats(torch.full((1, 1, 1, 1), 51, dtype=torch.uint8))
    assert one == {"mean": [0.2], "std": [0.0], "pixels_per_channel": 1}
    assert isinstance(one["pixels_per_channel"], int)  # a count, written as such to stats.json
    flat = compute_stats(torch.full((4, 2, 3, 3), 255, dtype=torch.uint8))
    assert flat["mean"] == [1.0, 1.0] and flat["std"] == [0.0, 0.0]


def test_to_inputs_normalises_with_given_stats(tiny_set):
    x = to_inputs(tiny_set.images, {"mean": [0.5], "std": [0.25]}, torch.device("cpu"))
    expected = (tiny_set.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected)
    with pytest.raises(ValueError, match=r"^stats have 3 channels, images have 1$"):  # 12 would be the height
        to_inputs(tiny_set.images, {"mean": [0, 0, 0], "std": [1, 1, 1]}, torch.device("cpu"))



def test_to_inputs_normalises_each_channel_with_its_own_stats_in_float32():
    """Three channels of 5 x 6 images: a stats shape that broadcasts along the wrong axis fails or mixes
    channels up. Stats as float64 arrays (as NumPy computes them) still give float32 inputs."""
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
    x = to_inputs(images, {"mean": mean, "std": std}, torch.device("cpu"))
    assert x.dtype == torch.float32 and x.shape == images.shape
    for c in range(3):
        assert torch.allclose(x[:, c].double(), (images[:, c].double() / 255 - mean[c]) / std[c], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_stats_of_a_split_streamed_from_pngs_alone_count_every_image_of_a_partial_last_chunk(tmp_path, channels):
    """A folder dataset whose split has no ``<split>.npy`` (staged files, or over PIXELS_MAX_BYTES):
    normalize decodes the PNGs in DataLoader workers, chunk by chunk, and the last chunk is short.
    The statistics must equal a direct computation over every image, read here with PIL alone."""
    from PIL import Image

    from foldwise.data.batches import normalization_stats, uint8_chunks
    from foldwise.data.layout import split_files
    from foldwise.data.prepare import prepare
    from tests.conftest import CLASSES, make_images

    data = make_images(60, channels=channels, seed=4)
    prepare({"train": data, "test": data}, tuple(CLASSES), tmp_path, 15, 0, seed=0)
    (tmp_path / "train.npy").unlink()  # PNGs only: the streamed path
    files = split_files(tmp_path, "train")
    assert files.pixels is None and len(files) == 45
    chunks = list(uint8_chunks(files, pixels=7 * 144 * channels, workers=2))
    assert [len(c) for c in chunks] == [7] * 6 + [3]  # the last chunk is partial
    direct = np.stack([np.asarray(Image.open(path)).reshape(12, 12, channels) for path in files.paths])
    direct = direct.astype(np.float64) / 255
    for stats in (compute_stats(iter(chunks)), normalization_stats(tmp_path)):
        np.testing.assert_allclose(stats["mean"], direct.mean(axis=(0, 1, 2)), rtol=1e-12)
        np.testing.assert_allclose(stats["std"], direct.std(axis=(0, 1, 2)), rtol=1e-9)
        assert stats["pixels_per_channel"] == 45 * 144

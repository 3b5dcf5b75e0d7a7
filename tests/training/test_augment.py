import dataclasses

import pytest
import torch

from foldwise.core.params import Params
from foldwise.training.augment import Augmenter, check_augment, flip_allowed


def test_each_image_gets_its_own_crop_and_the_shape_is_kept():
    p = dataclasses.replace(Params(), augment=True, augment_padding=2, augment_flip=False)
    x = torch.arange(16 * 1 * 8 * 8, dtype=torch.float32).view(16, 1, 8, 8)
    out = Augmenter(p, seed=0)(x)
    assert out.shape == x.shape
    moved = [not torch.equal(a, b) for a, b in zip(out, x)]
    assert 0 < sum(moved) < 16  # some crops are the centre one (offset 2, 2), most are not
    # every output is a window of the reflect-padded input
    from torchvision.transforms.v2 import functional as TF

    padded = TF.pad(x, [2, 2, 2, 2], padding_mode="reflect")
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))


def test_flip_mirrors_about_half_the_images_and_is_seeded():
    p = dataclasses.replace(Params(), augment=True, augment_padding=0, augment_flip=True)
    x = torch.randn(200, 3, 5, 5)
    out = Augmenter(p, seed=1)(x)
    flipped = sum(torch.equal(o, i.flip(-1)) for o, i in zip(out, x))
    kept = sum(torch.equal(o, i) for o, i in zip(out, x))
    assert flipped + kept == 200 and 70 < flipped < 130
    assert torch.equal(out, Augmenter(p, seed=1)(x)) and not torch.equal(out, Augmenter(p, seed=2)(x))


def test_flip_auto_asks_the_dataset():
    assert flip_allowed(dataclasses.replace(Params(), dataset="fashion-mnist"))
    assert not flip_allowed(dataclasses.replace(Params(), dataset="mnist"))  # a mirrored 3 is no 3
    assert not flip_allowed(dataclasses.replace(Params(), dataset="digits"))
    assert flip_allowed(dataclasses.replace(Params(), dataset="digits", augment_flip=True))


def test_padding_must_fit_the_image():
    check_augment((1, 8, 8), dataclasses.replace(Params(), augment=True, augment_padding=7))
    with pytest.raises(ValueError, match="augment_padding: 8 is too large for 8x8 images; valid: 0 to 7"):
        check_augment((1, 8, 8), dataclasses.replace(Params(), augment=True, augment_padding=8))


def test_crops_come_from_their_own_seeded_stream_and_reach_every_offset():
    """Offsets 0 to 2 x padding in both directions all occur; the same seed gives the same crops
    whatever the global random state, another seed other crops."""
    p = dataclasses.replace(Params(), augment=True, augment_padding=2, augment_flip=False)
    x = torch.arange(400 * 9 * 9, dtype=torch.float32).view(400, 1, 9, 9)
    torch.manual_seed(0)
    out = Augmenter(p, seed=5)(x)
    torch.manual_seed(1)
    assert torch.equal(out, Augmenter(p, seed=5)(x)) and not torch.equal(out, Augmenter(p, seed=6)(x))
    from torchvision.transforms.v2 import functional as TF

    padded = TF.pad(x, [2, 2, 2, 2], padding_mode="reflect")
    offsets = {next((dy, dx) for dy in range(5) for dx in range(5)
                    if torch.equal(out[i], padded[i, :, dy:dy + 9, dx:dx + 9])) for i in range(400)}
    assert offsets == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_flip_auto_for_a_dataset_it_does_not_know_allows_flips():
    assert flip_allowed(dataclasses.replace(Params(), dataset="not-a-registered-source"))


def test_padding_is_checked_against_the_shorter_side_of_non_square_images():
    p = dataclasses.replace(Params(), augment=True, augment_padding=7)
    with pytest.raises(ValueError, match=r"^augment_padding: 7 is too large for 6x10 images; valid: 0 to 5 pixels$"):
        check_augment((1, 6, 10), p)
    with pytest.raises(ValueError, match=r"^augment_padding: 7 is too large for 10x6 images; valid: 0 to 5 pixels$"):
        check_augment((1, 10, 6), p)
    check_augment((1, 6, 10), dataclasses.replace(p, augment=False))  # not augmenting: any padding


def test_alternating_flips_show_each_image_both_ways_in_any_two_consecutive_epochs():
    """``augment_flip: alternate``: a random half mirrored in epoch 1, then each image in every other
    epoch; per image, whatever batch it comes in, the same in every DDP process (``flip_seed``)."""
    p = dataclasses.replace(Params(), augment=True, augment_padding=0, augment_flip="alternate")
    x = torch.randn(100, 1, 4, 6)
    images = torch.randperm(100, generator=torch.Generator().manual_seed(3))  # one epoch's order

    def mirrored(epoch: int, augmenter: Augmenter) -> torch.Tensor:
        out = torch.cat([augmenter(x[b], b, epoch) for b in images.split(32)])  # batches of 32, last 4
        flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x[images])])
        kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x[images])])
        assert bool((flipped | kept).all())
        return flipped[images.argsort()]  # by image

    augmenter = Augmenter(p, seed=0, images=100, flip_seed=7)
    first, second, third = (mirrored(e, augmenter) for e in (1, 2, 3))
    assert 30 < int(first.sum()) < 70
    assert torch.equal(second, ~first) and torch.equal(third, first)
    other_process = Augmenter(p, seed=1_000_003, images=100, flip_seed=7)
    assert torch.equal(mirrored(1, other_process), first)
    assert not torch.equal(mirrored(1, Augmenter(p, seed=0, images=100, flip_seed=8)), first)
    assert flip_allowed(dataclasses.replace(p, dataset="digits"))  # asked for: also test-time flips
    with pytest.raises(ValueError, match="alternating flips need each image's position"):
        augmenter(x)

"""Data augmentation of training batches: random crop after padding (a translation of up to
``augment_padding`` pixels), random horizontal flip.

Applied to whole batches on the training device, after normalisation, and
never to validation or test batches. torchvision's ``v2.RandomCrop`` draws
one crop per call, i.e. per batch; here every image gets its own offset and
flip, drawn from a seeded CPU generator, so runs repeat exactly and resume
exactly on any device. Padding reflects the image (``v2.functional.pad``)
rather than adding a border of one colour, which after normalisation would
not be black.

``augment_flip: alternate`` (from the CIFAR-10 speed runs, Keller Jordan's airbench): a random half of
the images is mirrored in the first epoch, and every image is mirrored in every other epoch from then
on, so any two consecutive epochs show each image both ways (random flips repeat a view half the time).
"""

from __future__ import annotations

import torch

from foldwise.core.params import Params

SEED_OFFSET = 7919  # augmentation draws from its own stream: shuffling stays the same as without it


def _tf():  # torchvision.transforms.v2.functional
    """torchvision's v2 functional transforms, imported on first use: importing torchvision costs
    every stage about a second at start-up, and only augmented training needs it."""
    from torchvision.transforms.v2 import functional

    return functional


def _to(draws: torch.Tensor, device: torch.device) -> torch.Tensor:  # pragma: no mutate block (CUDA only)
    """CPU random draws onto ``device``. On CUDA through pinned memory, asynchronously: a copy from
    ordinary (pageable) memory would make the CPU wait, every batch, for all the GPU work queued."""
    if device.type != "cuda":
        return draws.to(device)
    return draws.pin_memory().to(device, non_blocking=True)


def flip_allowed(p: Params) -> bool:
    """``augment_flip``, where ``auto`` asks the dataset (a mirrored digit is not the same digit)."""
    if p.augment_flip != "auto":
        return bool(p.augment_flip)
    from foldwise.data.sources import SOURCES

    source = SOURCES.get(p.dataset)
    return True if source is None else source.flip


def check_augment(shape: tuple[int, ...], p: Params) -> None:
    """Fail before training when ``augment_padding`` cannot be reflected in images of ``shape``."""
    if p.augment and p.augment_padding >= min(shape[-2:]):
        raise ValueError(f"augment_padding: {p.augment_padding} is too large for {shape[-2]}x{shape[-1]} "
                         f"images; valid: 0 to {min(shape[-2:]) - 1} pixels")


class Augmenter:
    """Random per-image crop (``augment_padding`` pixels each side) and horizontal flip.

    ``images``: how many images the training set has, and ``flip_seed`` the seed of their first-epoch
    flips (``augment_flip: alternate`` only; the same in every DDP process, as the images are)."""

    def __init__(self, p: Params, seed: int, images: int = 0, flip_seed: int = 0) -> None:
        self.padding = p.augment_padding
        self.flip = flip_allowed(p)
        self.generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
        self.first_flips = None
        if p.augment_flip == "alternate":
            drawn = torch.Generator().manual_seed(flip_seed + SEED_OFFSET)
            self.first_flips = torch.rand(images, generator=drawn).lt(0.5)

    def __call__(self, x: torch.Tensor, images: torch.Tensor | None = None, epoch: int = 1) -> torch.Tensor:
        """``x`` augmented; ``images``: their positions in the training set, and ``epoch`` (from 1) the
        epoch, which alternating flips need."""
        n, c, h, w = x.shape
        if self.padding:
            pad = self.padding
            padded = _tf().pad(x, [pad, pad, pad, pad], padding_mode="reflect")
            dy, dx = _to(torch.randint(0, 2 * pad + 1, (2, n, 1), generator=self.generator), x.device)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # n x 1 x h x 1
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # n x 1 x 1 x w
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            channel = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        if self.first_flips is not None:
            if images is None:
                raise ValueError("alternating flips need each image's position in the training set")
            flips = self.first_flips[images] ^ (epoch % 2 == 0)  # mirrored in epoch 1 or else in epoch 2
            x = torch.where(_to(flips, x.device)[:, None, None, None], _tf().horizontal_flip(x), x)
        elif self.flip:
            mirrored = _to(torch.rand(n, generator=self.generator).lt(0.5), x.device)[:, None, None, None]
            x = torch.where(mirrored, _tf().horizontal_flip(x), x)
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

"""Data augmentation of training batches: random crop after padding, random horizontal flip.

Applied to whole batches on the training device, after normalisation, and
never to validation or test batches. torchvision's ``v2.RandomCrop`` draws
one crop per call, i.e. per batch; here every image gets its own offset and
flip, drawn from a seeded CPU generator, so runs repeat exactly and resume
exactly on any device. Padding reflects the image (``v2.functional.pad``)
rather than adding a border of one colour, which after normalisation would
not be black.
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
    """Random per-image crop (``augment_padding`` pixels each side) and horizontal flip."""

    def __init__(self, p: Params, seed: int) -> None:
        self.padding = p.augment_padding
        self.flip = flip_allowed(p)
        self.generator = torch.Generator().manual_seed(seed + SEED_OFFSET)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
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
        if self.flip:
            mirrored = _to(torch.rand(n, generator=self.generator).lt(0.5), x.device)[:, None, None, None]
            x = torch.where(mirrored, _tf().horizontal_flip(x), x)
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

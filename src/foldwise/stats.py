"""Per-channel normalisation statistics of the training images."""

from __future__ import annotations

from typing import Iterable

import torch


def compute_stats(images: torch.Tensor | Iterable[torch.Tensor], chunk: int = 8192) -> dict[str, list[float]]:
    """Mean and std per channel of uint8 N x C x H x W images, on the [0, 1] scale.

    ``images`` is one tensor or an iterable of chunks (streamed from disk for
    large datasets); any channel count. Sums of pixel values and of their
    squares are accumulated as exact integers, so the result does not depend
    on how the images were chunked and equals a float64 reference.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}")
        images = images.split(chunk)
    total = total_sq = None
    count = 0
    for part in images:
        if part.ndim != 4 or part.dtype != torch.uint8:
            raise ValueError(f"expected uint8 N x C x H x W chunks, got {part.dtype} {tuple(part.shape)}")
        wide = part.to(torch.int64)
        sums, squares = wide.sum(dim=(0, 2, 3)), wide.square().sum(dim=(0, 2, 3))
        if total is None:
            total, total_sq = sums, squares
        elif len(sums) != len(total):
            raise ValueError(f"chunks mix {len(total)} and {len(sums)} channels")
        else:
            total, total_sq = total + sums, total_sq + squares
        count += part.numel() // part.shape[1]
    if total is None or count == 0:
        raise ValueError("no images to compute statistics from")
    mean = total.double() / count
    var = (total_sq.double() / count - mean.square()).clamp_min(0)
    return {"mean": (mean / 255).tolist(), "std": (var.sqrt() / 255).tolist(), "pixels_per_channel": count}

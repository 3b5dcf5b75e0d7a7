"""Normalisation: per-channel statistics of the training images, and the arithmetic that applies them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


def stats_tensors(stats: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's per-channel mean and std as 1 x C x 1 x 1 float32 tensors on ``device``."""
    mean = torch.tensor(stats["mean"], dtype=torch.float32).view(1, -1, 1, 1).to(device)
    std = torch.tensor(stats["std"], dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return mean, std


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 ``(x / 255 - mean) / std`` on the device of ``mean``.

    A host-to-device copy does not wait for the GPU when ``images`` are pinned (streamed batches on
    CUDA), so no batch syncs the host; a copy back to the host would have to, so it stays blocking."""
    if mean.shape[1] != images.shape[1]:
        raise ValueError(f"stats have {mean.shape[1]} channels, images have {images.shape[1]}")
    images = images.to(mean.device, non_blocking=images.device.type == "cpu")
    return ((images.float() / 255.0 - mean) / std).contiguous()


def to_inputs(images: torch.Tensor, stats: dict[str, Any], device: torch.device) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 normalised with the train split's mean/std, on ``device``."""
    return normalize(images, *stats_tensors(stats, device))


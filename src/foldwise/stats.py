"""Per-channel normalisation statistics of the training images."""

from __future__ import annotations

import torch


def compute_stats(images: torch.Tensor, chunk: int = 8192) -> dict[str, list[float]]:
    """Mean and std per channel of uint8 N x C x H x W images, on the [0, 1] scale.

    Streams over chunks of images, accumulating sums in float64, so memory
    stays bounded and the result matches a float64 reference.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return {"mean": mean.tolist(), "std": std.tolist(), "pixels_per_channel": count}

"""How close a rebuilt image is to the real one: PSNR, SSIM, and which rebuilt image belongs to which real one.

The server does not know the order of a worker's images, so before scoring every real image is paired with one
rebuilt image by the assignment that minimises the total squared error (Hungarian method, scipy).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from fed_core.data.mnist import MEAN, STD

READABLE_DB = 25.0  # a faithful copy to the eye: the figure the page and the CLI count images above


def psnr(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images with pixels in [0, data_range]; inf when identical."""
    mse = (image.double() - reference.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), mean over valid windows."""
    x, y = image.double().view(1, 1, *image.shape[-2:]), reference.double().view(1, 1, *reference.shape[-2:])
    window = _gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.mean().item()


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised [N, 1, 28, 28] -> pixels [N, 28, 28] in [0, 1]."""
    return (x.detach() * STD + MEAN).clamp(0, 1).view(-1, 28, 28)


def match_images(images: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """matched[i]: the rebuilt image paired with real image i, or -1 when there are fewer rebuilt images.

    The pairing minimises the summed mean squared error over all pairs (scipy's linear_sum_assignment).
    """
    real, rebuilt = reference.flatten(1).double(), images.flatten(1).double()
    # |r - g|^2 = |r|^2 + |g|^2 - 2 r.g: no [N, M, 784] difference tensor (2.6 GB for 640 images)
    errors = real.pow(2).sum(1, keepdim=True) + rebuilt.pow(2).sum(1) - 2 * real @ rebuilt.T
    rows, cols = linear_sum_assignment(errors.numpy())
    matched = [-1] * len(reference)
    for i, j in zip(rows.tolist(), cols.tolist()):
        matched[i] = j
    return matched


def scores(images: torch.Tensor, reference: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
    """(matched, PSNR, SSIM) of every real image; a real image left without a rebuilt one scores against black."""
    matched = match_images(images, reference)
    guesses = [images[j] if j >= 0 else torch.zeros_like(t) for j, t in zip(matched, reference)]
    return (
        matched,
        [psnr(g, t) for g, t in zip(guesses, reference)],
        [ssim(g, t) for g, t in zip(guesses, reference)],
    )


def mean_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR over the real images after matching (the live figure of an attack's progress)."""
    guesses = [images[j] if j >= 0 else torch.zeros_like(t) for j, t in zip(match_images(images, reference), reference)]
    return float(np.mean([psnr(g, t) for g, t in zip(guesses, reference)]))


def time_to_psnr(history: list[dict], target: float) -> float | None:
    """Seconds until the mean PSNR in ``history`` first reached ``target`` dB (None if it never did)."""
    return next((h["seconds"] for h in history if h.get("psnr", -math.inf) >= target), None)

"""Training that expects real hands: each training image is redrawn at random as another writer might have drawn it.

A local-training option (LocalSettings.augment). Every batch a worker trains on is changed on the fly, the
same way for every engine, in one batched pass over the worker's images:

- stroke width: a quarter of the images get a stroke about 1 px wider (a 2x2 dilation), a sixth about 2 px
  wider (3x3), a tenth thinner (a 2x2 erosion, half blended back so thin strokes do not vanish): the
  bold strokes of a finger or a wide brush, which MNIST's pens never made;
- a small affine change: rotation up to 12 degrees, shear up to 0.3 (17 degrees), scale 0.85 to 1.1 and a
  shift of up to 2 px;
- elastic distortion on half of the images: a smooth random displacement field of the size Simard et al.
  (2003) used (sigma 4 px, alpha 34: pixels move about 1.4 px), made by upsampling coarse noise.

Geometry and distortion are one grid_sample. The random draws come from each worker's own torch generator
(simulation randomness, seeded from the worker's round seed), so a worker's batches do not depend on which
others share its training group.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F

SIDE = 28
ROTATION_DEGREES, MAX_SHEAR, SCALE_RANGE, MAX_SHIFT_PX = 12.0, 0.3, (0.85, 1.1), 2.0
ELASTIC_SHARE, ELASTIC_PX, ELASTIC_GRID = 0.5, 1.4, 5  # displacement std in px; its random grid's side
# Shares of images whose strokes are thickened by a 2x2 / 3x3 dilation or thinned by a 2x2 erosion.
THICKER, THICKEST, THINNER = 0.25, 1 / 6, 0.1
CHUNK = 512  # images redrawn at once: about 20 MB of temporaries


def augmented(images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Float images [K, B, 1, 28, 28] in 0..1 (K workers, each with its generator) -> randomly redrawn ones.

    Redrawn CHUNK images at a time, so the temporaries stay a few MB however large the batch of all workers.
    """
    k, b = images.shape[:2]
    draws = [_draw(b, generator) for generator in generators]
    choice, theta, noise = (torch.cat([d[i] for d in draws]) for i in range(3))
    flat = images.reshape(k * b, 1, SIDE, SIDE)
    out = torch.empty_like(flat)
    for start in range(0, k * b, CHUNK):
        part = slice(start, start + CHUNK)
        thick = _stroke_width(flat[part], choice[part])
        grid = F.affine_grid(theta[part], list(thick.shape), align_corners=False) + _elastic(noise[part])
        out[part] = F.grid_sample(thick, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view_as(images)


def _draw(b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One worker's random choices for b images: stroke change, affine matrix, raw displacement field."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, b, generator=generator)

    choice = torch.rand(b, generator=generator)
    angle = uniform(-1, 1) * math.radians(ROTATION_DEGREES)
    shear = uniform(-MAX_SHEAR, MAX_SHEAR)
    scale = uniform(*SCALE_RANGE)
    shift = uniform(-1, 1, 2) * (2 * MAX_SHIFT_PX / SIDE)  # grid coordinates span 2 over 28 px
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input coordinates: rotate, shear along x, then divide by the scale (bigger digit = smaller step).
    theta = torch.stack(
        [
            torch.stack([cos / scale, (shear * cos - sin) / scale, shift[0]], 1),
            torch.stack([sin / scale, (shear * sin + cos) / scale, shift[1]], 1),
        ],
        1,
    )
    noise = torch.randn(b, 2, ELASTIC_GRID, ELASTIC_GRID, generator=generator)
    noise *= (torch.rand(b, 1, 1, 1, generator=generator) < ELASTIC_SHARE).float()
    return choice, theta, noise


def _stroke_width(images: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Thicker or thinner strokes for the images whose draw says so (each change made on those only)."""
    out = images.clone()
    changes = (
        (0.0, THICKER, lambda x: _dilated(x, 2)),
        (THICKER, THICKER + THICKEST, lambda x: _dilated(x, 3)),
        (1 - THINNER, 1.0, lambda x: torch.maximum(-_dilated(-x, 2), x * 0.5)),
    )
    for low, high, change in changes:
        chosen = torch.nonzero((choice >= low) & (choice < high)).flatten()
        out[chosen] = change(images[chosen])
    return out


def _dilated(images: torch.Tensor, size: int) -> torch.Tensor:
    """Grey dilation by a size x size square, as shifted maxima (far faster on CPU than max_pool2d with stride 1)."""
    before, after = (size - 1) // 2, size // 2
    padded = F.pad(images, (before, after, before, after))
    rows = padded[..., : SIDE + before + after, :SIDE]
    for shift in range(1, size):
        rows = torch.maximum(rows, padded[..., : SIDE + before + after, shift : shift + SIDE])
    out = rows[..., :SIDE, :]
    for shift in range(1, size):
        out = torch.maximum(out, rows[..., shift : shift + SIDE, :])
    return out


def _elastic(noise: torch.Tensor) -> torch.Tensor:
    """Coarse random fields [N, 2, 5, 5] -> smooth displacements in grid units [N, 28, 28, 2].

    Simard's field (uniform noise smoothed by a Gaussian of sigma 4 px, times alpha 34) moves a pixel by
    about 1.4 px (standard deviation) and varies over about 2 sigma = 8 px. Upsampling a 5x5 grid of noise
    (points 7 px apart) bicubically makes the same kind of field; bicubic upsampling is separable, so it is
    two small matrix products (far faster than F.interpolate's bicubic mode, or a convolution, on CPU).
    """
    up = _upsampling()
    field = up @ noise @ up.T
    return (field * (ELASTIC_PX * 2 / SIDE)).permute(0, 2, 3, 1)


@cache
def _upsampling() -> torch.Tensor:
    """[28, 5]: bicubic interpolation of 5 evenly spaced values onto 28 pixels."""
    identity = torch.eye(ELASTIC_GRID)[:, None, None, :]  # each basis vector as a 1x5 image
    return F.interpolate(identity, size=(1, SIDE), mode="bicubic", align_corners=True)[:, 0, 0, :].T.contiguous()

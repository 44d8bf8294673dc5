"""Digits and scribbles drawn the way the Draw page's canvas records them, for the drawing benchmark and tests.

Digits are redrawn the way the canvas records a drawing (pages/2_Draw.py: a 280x280 canvas, white strokes
of a round brush on an opaque black background): each MNIST digit is thinned to its centre line (at 4x
resolution, so the line is smooth), the line is scaled, slanted and centred on the canvas, and every pixel
within half a brush width of it is ink, with a one-pixel antialiased edge. So the writer's path is kept and the
pen is replaced by the brush. Scribbles are strokes zigzagging over a rectangle closely enough to cover it
(level, upright or slanted), or looping many times over an area, as people scratch a drawing out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from fed_core.drawing.strokes import thin

CANVAS = 280
UPSAMPLE = 4  # the digit is thinned at 112x112 so its centre line is smooth


class Row(NamedTuple):
    """One way of drawing: a brush ``width`` (canvas px), MNIST's 20 px box drawn ``size`` of the canvas, and
    ``slant`` degrees of lean added to the writer's own (positive leans right)."""

    label: str
    width: int
    size: float
    slant: int

    @property
    def scale(self) -> float:
        return self.size * CANVAS / 20  # canvas px per MNIST px

    @property
    def shear(self) -> float:
        return -np.tan(np.radians(self.slant))  # x per px of y (y grows downwards): right-leaning is negative


def centre_lines(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, 28, 28] digits -> bool [N, 112, 112] centre lines."""
    lines = []
    for batch in images.split(500):
        big = F.interpolate(batch[:, None].float() / 255, scale_factor=UPSAMPLE, mode="bilinear")[:, 0]
        lines.append(thin((big > 0.5).numpy()))
    return np.concatenate(lines)


def distance_to_line(line: np.ndarray, scale: float, shear: float, margin: int) -> np.ndarray:
    """Distance of every canvas pixel to the centre line drawn ``scale`` canvas px per MNIST px, sheared, centred.

    Only pixels within ``margin`` of the line's box are measured; the rest are set to infinity.
    """
    step = scale / UPSAMPLE
    offset = (CANVAS - 28 * scale) / 2

    def canvas_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx, cy = offset + step * (x + 0.5), offset + step * (y + 0.5)
        return cx + shear * (cy - CANVAS / 2), cy

    ys, xs = np.nonzero(line)
    points = np.stack(canvas_xy(xs, ys), 1)
    image = Image.new("1", (CANVAS, CANVAS))
    draw = ImageDraw.Draw(image)
    draw.point([tuple(p) for p in points], 1)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # join 8-neighbours; each pair once
        joined = line & np.roll(line, (-dy, -dx), axis=(0, 1))
        for y, x in zip(*np.nonzero(joined)):
            draw.line((*canvas_xy(x, y), *canvas_xy(x + dx, y + dy)), fill=1)
    return distance_near(np.asarray(image), points, margin)


def distance_near(path: np.ndarray, points: np.ndarray, margin: int) -> np.ndarray:
    low = np.clip(np.floor(points.min(0)).astype(int) - margin, 0, CANVAS)
    high = np.clip(np.ceil(points.max(0)).astype(int) + margin + 1, 0, CANVAS)
    window = slice(low[1], high[1]), slice(low[0], high[0])
    distance = np.full((CANVAS, CANVAS), np.inf)
    distance[window] = ndimage.distance_transform_edt(~path[window])
    return distance


def brush(distance: np.ndarray, width: float) -> np.ndarray:
    """The opaque RGBA canvas: white ink within half a brush width of the path, antialiased, on black."""
    ink = np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)
    canvas = np.empty((CANVAS, CANVAS, 4), dtype=np.uint8)
    canvas[..., :3] = np.round(ink * 255).astype(np.uint8)[..., None]
    canvas[..., 3] = 255
    return canvas


def stroke(points: np.ndarray, width: float) -> np.ndarray:
    image = Image.new("1", (CANVAS, CANVAS))
    ImageDraw.Draw(image).line([tuple(p) for p in points], fill=1)
    return brush(distance_near(np.asarray(image), points, int(width)), width)


def zigzag(rng: np.random.Generator, width: float, angle: float) -> np.ndarray:
    """Back and forth over a rectangle, each pass at most one brush width below the last."""
    length, height = rng.uniform(40, 220, 2)
    rows = np.arange(0, height + 1e-9, rng.uniform(0.5, 1.0) * width)
    points = [(x, y) for i, y in enumerate(rows) for x in ((0, length) if i % 2 == 0 else (length, 0))]
    return placed(np.array(points), angle, rng)


def loops(rng: np.random.Generator, width: float) -> np.ndarray:
    """Many shaky loops drifting sideways, as when scratching a drawing out."""
    radius, drift, turns = rng.uniform(25, 90), rng.uniform(0, 120), rng.integers(4, 12)
    t = np.linspace(0, 2 * np.pi * turns, 60 * turns)
    shake = rng.normal(0, 3, (2, len(t)))
    points = np.stack([np.linspace(0, drift, len(t)) + radius * np.cos(t), 0.9 * radius * np.sin(t)]) + shake
    return placed(points.T, rng.uniform(0, np.pi), rng)


def placed(points: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Rotated, shrunk to fit if need be, and put anywhere on the canvas."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = points @ rotation.T
    points = (points - points.min(0)) * min(1.0, 240 / np.ptp(points, axis=0).max())
    return points + rng.uniform(20, np.maximum(20, CANVAS - 20 - points.max(0)))


SCRIBBLES: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "zigzag, level": lambda rng, width: zigzag(rng, width, 0.0),
    "zigzag, upright": lambda rng, width: zigzag(rng, width, np.pi / 2),
    "zigzag, slanted": lambda rng, width: zigzag(rng, width, rng.uniform(0.2, np.pi / 2 - 0.2)),
    "loops": loops,
}


def drawn_digits(images: torch.Tensor, table: list[Row]) -> Iterator[tuple[int, np.ndarray]]:
    """(row index, canvas) for every digit and row; rows of the same size and slant share one distance map."""
    margin = max(row.width for row in table)
    for line in centre_lines(images):
        shapes = {(row.scale, row.shear) for row in table}
        distances = {shape: distance_to_line(line, *shape, margin) for shape in shapes}
        for i, row in enumerate(table):
            yield i, brush(distances[row.scale, row.shear], row.width)

"""How well the Draw page reads a drawn digit, and how often it refuses one, before and after a change.

    python bench/bench_drawing.py --limit 500          # 500 test digits, 16 rows, both rules: ~2 CPU min
    python bench/bench_drawing.py --before <git rev>   # compare with that revision's fed_core/drawing/preprocess.py
    python bench/bench_drawing.py --model other.pt     # read by another model (default: the pretrained one)

Digits are redrawn the way the canvas records a drawing (pages/2_Draw.py: a 280x280 canvas, white strokes
of a round brush on an opaque black background): each MNIST test digit is thinned to its centre line (at
4x resolution, so the line is smooth), the line is scaled, slanted and centred on the canvas, and every pixel
within half a brush width of it is ink, with a one-pixel antialiased edge. So the writer's path is kept and the
pen is replaced by the brush. One thing varies per row, the others stay at the page's usual drawing (brush
18 px, upright as written, MNIST's 20 px box drawn 70% of the canvas, about 196 px):
brush widths 8 to 60 px, slants of -20 to +20 degrees (positive leans right, on top of the writer's own),
and sizes from 40% to 100% of the canvas. Each row gives the share read right by the model (refusals count
as wrong) and the share refused. MNIST's own bitmaps, enlarged 10x, show the bold pens of its writers as they
are. Scribbles are strokes of a 10 to 30 px brush zigzagging over a rectangle closely enough to cover it
(level, upright or slanted), or looping many times over an area, as people scratch a drawing out.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from fed_core.data.mnist import load_mnist
from fed_core.drawing import preprocess as preprocess
from fed_core.drawing.strokes import thin
from fed_core.models import load_model

ROOT = Path(__file__).resolve().parent.parent

CANVAS = 280
UPSAMPLE = 4  # the digit is thinned at 112x112 so its centre line is smooth
BRUSH, SIZE, SLANT = 18, 0.7, 0  # the usual drawing: page's brush, MNIST's box 70% of the canvas, upright
WIDTHS = (8, 12, 18, 24, 30, 40, 50, 60)
SLANTS = (-20, -10, 10, 20)  # degrees, positive leaning right
SIZES = (0.4, 0.55, 0.85, 1.0)  # MNIST's 20 px box drawn this share of the canvas
BEFORE = "1bd51ea"  # main before the stroke normalisation (issue 19)
MODEL = ROOT / "assets" / "pretrained_crypto_cnn.pt"
Prepare = Callable[[np.ndarray], object]


class Row(NamedTuple):
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


def rows() -> list[Row]:
    return (
        [Row(f"brush {w:2d} px", w, SIZE, SLANT) for w in WIDTHS]
        + [Row(f"slant {d:+d} deg", BRUSH, SIZE, d) for d in SLANTS]
        + [Row(f"size {round(100 * f):3d}%", BRUSH, f, SLANT) for f in SIZES]
    )


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


def refused(prepare: Prepare, canvas: np.ndarray) -> bool:
    try:
        prepare(canvas)
    except preprocess.DrawingError:
        return True
    return False


def preprocess_at(revision: str):
    """fed_core/drawing/preprocess.py as it was at a git revision, imported as its own module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:fed_core/drawing/preprocess.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "preprocess_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("preprocess_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DrawingError = preprocess.DrawingError  # so `refused` catches both versions' errors
    return module


def drawn_digits(images: torch.Tensor, table: list[Row]) -> Iterator[tuple[int, np.ndarray]]:
    """(row index, canvas) for every digit and row; rows of the same size and slant share one distance map."""
    margin = max(row.width for row in table)
    for line in centre_lines(images):
        shapes = {(row.scale, row.shear) for row in table}
        distances = {shape: distance_to_line(line, *shape, margin) for shape in shapes}
        for i, row in enumerate(table):
            yield i, brush(distances[row.scale, row.shear], row.width)


def percent(count: int, total: int) -> str:
    return f"{100 * count / total:6.2f}%"


class Tally:
    """Refusals and readings of one rule on one row; the prepared digits are read in one batch at the end."""

    def __init__(self) -> None:
        self.refused, self.tensors, self.labels = 0, [], []

    def add(self, prepare: Prepare, canvas: np.ndarray, label: int) -> None:
        try:
            self.tensors.append(prepare(canvas).tensor)
            self.labels.append(label)
        except preprocess.DrawingError:
            self.refused += 1

    def read_right(self, model: torch.nn.Module) -> int:
        if not self.tensors:
            return 0
        with torch.no_grad():
            predictions = torch.cat([model(batch) for batch in torch.cat(self.tensors).split(1000)]).argmax(1)
        return int((predictions == torch.tensor(self.labels)).sum())

    def cell(self, name: str, model: torch.nn.Module, total: int) -> str:
        return f"{name} {percent(self.read_right(model), total)} / {percent(self.refused, total)}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=1000, help="first n MNIST test digits")
    parser.add_argument("--before", default=BEFORE, help="git revision of the rule to compare with")
    parser.add_argument("--model", type=Path, default=MODEL, help="the model that reads the digits")
    parser.add_argument("--scribbles", type=int, default=500, help="scribbles of each kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rules = {"before": preprocess_at(args.before).prepare_digit, "after": preprocess.prepare_digit}
    model = load_model(args.model)[0].eval()
    mnist = load_mnist()
    images, labels = mnist.test_images[: args.limit], mnist.test_labels[: args.limit].tolist()
    table = rows()

    tallies = {(i, name): Tally() for i in range(len(table)) for name in rules}
    for n, (i, canvas) in enumerate(drawn_digits(images, table)):
        for name, prepare in rules.items():  # interleaved, so the machine's load hits both alike
            tallies[i, name].add(prepare, canvas, labels[n // len(table)])
    print(f"== {len(images)} MNIST test digits drawn with a round brush (before = {args.before}, after = working tree)")
    print(f"   read right by {args.model.name} (refusals count as wrong) / refused")
    for i, row in enumerate(table):
        print(f"{row.label:15s}: " + ",  ".join(tallies[i, name].cell(name, model, len(images)) for name in rules))

    bitmaps = {name: Tally() for name in rules}
    for image, label in zip(images, labels):
        for name, prepare in rules.items():
            bitmaps[name].add(prepare, np.kron(image.numpy(), np.ones((10, 10), dtype=np.uint8)), label)
    print("MNIST bitmaps x10: " + ",  ".join(t.cell(name, model, len(images)) for name, t in bitmaps.items()))

    print(f"== scribbles, brush 10-30 px, refused ({args.scribbles} of each kind)")
    rng = np.random.default_rng(0)
    for kind, path in SCRIBBLES.items():
        widths = rng.uniform(10, 30, args.scribbles)
        canvases = [stroke(path(rng, width), width) for width in widths]
        print(
            f"{kind}: "
            + ", ".join(
                f"{name} {percent(sum(refused(prepare, c) for c in canvases), len(canvases))}"
                for name, prepare in rules.items()
            )
        )


if __name__ == "__main__":
    main()

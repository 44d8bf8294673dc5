"""How often the Draw page refuses a real digit, and how often it refuses a scribble, before and after a change.

    python bench/bench_drawing.py                      # all 10k test digits, the rule now and at --before: 25 CPU min
    python bench/bench_drawing.py --limit 1000         # a quicker look: 3 CPU min
    python bench/bench_drawing.py --before <git rev>   # compare with that revision's fed_core/preprocess.py

Digits are redrawn the way the canvas records a drawing (pages/2_Draw.py: a 280x280 canvas, white strokes
of a round brush on an opaque black background): each MNIST test digit is thinned to its centre line (at
4x resolution, so the line is smooth), the line is scaled so the digit is about 200, 100 or 60 px tall, and
every pixel within half a brush width of it is ink, with a one-pixel antialiased edge. So the writer's
path is kept and the pen is replaced by the brush, at widths 10 to 30 px (the page uses 18).
MNIST's own bitmaps, enlarged 10x, show the bold pens of its writers as they are.
Scribbles are strokes of the same brush (10 to 30 px) zigzagging over a rectangle closely enough to cover
it (level, upright or slanted), or looping many times over an area, as people scratch a drawing out.

Needs scipy (installed with the pinned packages, not pinned itself) for the distance transform.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from fed_core import preprocess
from fed_core.data import load_mnist

ROOT = Path(__file__).resolve().parent.parent

CANVAS = 280
UPSAMPLE = 4  # the digit is thinned at 112x112 so its centre line is smooth
WIDTHS = (10, 14, 18, 22, 26, 30)
SCALES = (10, 5, 3)  # canvas px per MNIST px: digits about 200, 100 and 60 px tall
BEFORE = "d1945da"  # the last commit with the old rule (fill > 0.85 unless min side < 0.3 of max side)
Prepare = Callable[[np.ndarray], object]


def thin(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a batch [N, H, W] of bool images to one-pixel centre lines."""
    image = np.pad(binary, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for first in (True, False):
            p = image
            n = p[:, :-2, 1:-1], p[:, :-2, 2:], p[:, 1:-1, 2:], p[:, 2:, 2:]
            n += p[:, 2:, 1:-1], p[:, 2:, :-2], p[:, 1:-1, :-2], p[:, :-2, :-2]  # clockwise from north
            count = sum(x.astype(np.int8) for x in n)
            crossings = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.int8) for i in range(8))
            north, east, south, west = n[0], n[2], n[4], n[6]
            if first:
                side = ((north & east & south) == 0) & ((east & south & west) == 0)
            else:
                side = ((north & east & west) == 0) & ((north & south & west) == 0)
            remove = (p[:, 1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (crossings == 1) & side
            if remove.any():
                image[:, 1:-1, 1:-1][remove] = 0
                changed = True
    return image[:, 1:-1, 1:-1].astype(bool)


def centre_lines(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, 28, 28] digits -> bool [N, 112, 112] centre lines."""
    lines = []
    for batch in images.split(500):
        big = F.interpolate(batch[:, None].float() / 255, scale_factor=UPSAMPLE, mode="bilinear")[:, 0]
        lines.append(thin((big > 0.5).numpy()))
    return np.concatenate(lines)


def distance_to_line(line: np.ndarray, scale: float, margin: int) -> np.ndarray:
    """Distance of every canvas pixel to the centre line drawn ``scale`` canvas px per MNIST px, centred.

    Only pixels within ``margin`` of the line's box are measured; the rest are set to infinity.
    """
    step = scale / UPSAMPLE
    offset = (CANVAS - 28 * scale) / 2
    ys, xs = np.nonzero(line)
    points = np.stack([offset + step * (xs + 0.5), offset + step * (ys + 0.5)], 1)
    image = Image.new("1", (CANVAS, CANVAS))
    draw = ImageDraw.Draw(image)
    draw.point([tuple(p) for p in points], 1)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # join 8-neighbours; each pair once
        joined = line & np.roll(line, (-dy, -dx), axis=(0, 1))
        for y, x in zip(*np.nonzero(joined)):
            start = offset + step * (x + 0.5), offset + step * (y + 0.5)
            draw.line((*start, start[0] + step * dx, start[1] + step * dy), fill=1)
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
    """fed_core/preprocess.py as it was at a git revision, imported as its own module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:fed_core/preprocess.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "preprocess_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("preprocess_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DrawingError = preprocess.DrawingError  # so `refused` catches both versions' errors
    return module


def drawn_digits(images: torch.Tensor, scales: list[int], widths: list[int]) -> Iterator[tuple[int, int, np.ndarray]]:
    for line in centre_lines(images):
        for scale in scales:
            distance = distance_to_line(line, scale, margin=max(widths))
            for width in widths:
                yield scale, width, brush(distance, width)


def percent(count: int, total: int) -> str:
    return f"{100 * count / total:5.2f}% ({count}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=10_000, help="first n MNIST test digits")
    parser.add_argument("--before", default=BEFORE, help="git revision of the rule to compare with")
    parser.add_argument("--scales", type=int, nargs="+", default=list(SCALES))
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--scribbles", type=int, default=500, help="scribbles of each kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rules = {"before": preprocess_at(args.before).prepare_digit, "after": preprocess.prepare_digit}
    images = load_mnist().test_images[: args.limit]

    counts = {(s, w, r): 0 for s in args.scales for w in args.widths for r in rules}
    for scale, width, canvas in drawn_digits(images, args.scales, args.widths):
        for name, prepare in rules.items():
            counts[scale, width, name] += refused(prepare, canvas)
    print(f"== MNIST test digits drawn with a round brush, refused (before = {args.before}, after = working tree)")
    for scale in args.scales:
        for width in args.widths:
            size = f"~{20 * scale + width} px tall, brush {width:2d} px"
            print(
                f"{size}: before {percent(counts[scale, width, 'before'], len(images))}, "
                f"after {percent(counts[scale, width, 'after'], len(images))}"
            )

    bitmaps = [np.kron(image.numpy(), np.ones((10, 10), dtype=np.uint8)) for image in images]
    print(
        "== MNIST bitmaps enlarged 10x (the writers' own pens), refused: "
        + ", ".join(
            f"{name} {percent(sum(refused(prepare, b) for b in bitmaps), len(bitmaps))}"
            for name, prepare in rules.items()
        )
    )

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

"""How well the Draw page reads a drawn digit, and how often it refuses one, before and after a change.

    python bench/bench_drawing.py --limit 500          # 500 test digits, 16 rows, both rules: ~2 CPU min
    python bench/bench_drawing.py --before <git rev>   # compare with that revision's fed_core/drawing
    python bench/bench_drawing.py --model other.pt     # read by another model (default: the pretrained one)

MNIST test digits are redrawn the way the canvas records a drawing, the writer's path kept and the pen
replaced by a round brush (devtools/drawn.py). One thing varies per row, the others stay at the page's usual
drawing (brush 18 px, upright as written, MNIST's 20 px box drawn 70% of the canvas, about 196 px): brush
widths 8 to 60 px, slants of -20 to +20 degrees (positive leans right, on top of the writer's own), and sizes
from 40% to 100% of the canvas. Each row gives the share read right by the model (refusals count as wrong)
and the share refused. MNIST's own bitmaps, enlarged 10x, show the bold pens of its writers as they are.
Scribbles (zigzags level, upright or slanted, and loops) are drawn with a 10 to 30 px brush.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from devtools.drawn import SCRIBBLES, Row, drawn_digits, stroke
from fed_core.data.mnist import load_mnist
from fed_core.drawing import preprocess as preprocess
from fed_core.models import load_model

ROOT = Path(__file__).resolve().parent.parent

BRUSH, SIZE, SLANT = 18, 0.7, 0  # the usual drawing: page's brush, MNIST's box 70% of the canvas, upright
WIDTHS = (8, 12, 18, 24, 30, 40, 50, 60)
SLANTS = (-20, -10, 10, 20)  # degrees, positive leaning right
SIZES = (0.4, 0.55, 0.85, 1.0)  # MNIST's 20 px box drawn this share of the canvas
BEFORE = "6916141"  # main before scribbles were refused in their own frame (issue 19)
# In the order they import each other: preprocess imports the others.
DRAWING_MODULES = ("strokes", "scribbles", "preprocess")
MODEL = ROOT / "assets" / "pretrained_crypto_cnn.pt"
Prepare = Callable[[np.ndarray], object]


def rows() -> list[Row]:
    return (
        [Row(f"brush {w:2d} px", w, SIZE, SLANT) for w in WIDTHS]
        + [Row(f"slant {d:+d} deg", BRUSH, SIZE, d) for d in SLANTS]
        + [Row(f"size {round(100 * f):3d}%", BRUSH, f, SLANT) for f in SIZES]
    )


def refused(prepare: Prepare, canvas: np.ndarray) -> bool:
    try:
        prepare(canvas)
    except preprocess.DrawingError:
        return True
    return False


def preprocess_at(revision: str) -> ModuleType:
    """fed_core/drawing/preprocess.py as it was at a git revision, imported as its own module together with the
    drawing modules it imports, also as they were then (each is put in place of today's while the next loads)."""
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, "fed_core/drawing/"], cwd=ROOT, capture_output=True, text=True
    )
    present = {Path(name).stem for name in listed.stdout.split()} if listed.returncode == 0 else {"preprocess"}
    names = [name for name in DRAWING_MODULES if name in present]
    folder, today, module = (
        Path(tempfile.mkdtemp()),
        {name: sys.modules.get(f"fed_core.drawing.{name}") for name in names},
        None,
    )
    try:
        for name in names:
            source = subprocess.run(
                ["git", "show", f"{revision}:fed_core/drawing/{name}.py"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            path = folder / f"{name}_before.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(f"{name}_before", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[f"fed_core.drawing.{name}"] = module
    finally:
        for name, module_today in today.items():
            if module_today is None:
                sys.modules.pop(f"fed_core.drawing.{name}", None)
            else:
                sys.modules[f"fed_core.drawing.{name}"] = module_today
    module.DrawingError = preprocess.DrawingError  # so `refused` catches both versions' errors
    return module


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

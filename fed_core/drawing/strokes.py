"""A digit's slant and stroke width, brought into MNIST's range before MNIST's recipe scales it.

Both are measured at WORK_BOX px (4x MNIST's 20 px box, fine enough to measure a stroke):

- slant: the shear of the ink's second moments (the classic MNIST deskew). MNIST's writers slanted up to
  about 30 degrees right and 17 left (5th and 95th percentiles of the training digits, measured the same
  way); a slant beyond that is sheared back to the range's edge, not to upright, since the model learnt
  from slanted digits too.
- stroke width: the distance transform along the centre line (Zhang-Suen thinning) gives the median
  half-width. A stroke wider than MAX_WIDTH (px at 28x28; MNIST's strokes are 1.3 to 3.75 px, 5th to 95th
  percentile) is eroded to it: every pixel loses the excess half-width, from the distance transform, so
  the ink keeps its shape and its holes. One narrower than MIN_WIDTH (a fine brush on a large drawing,
  about 1 px once scaled) is dilated to it the same way. Redrawing the centre line at MNIST's width
  instead measured worse (82% of digits drawn with a 60 px brush read right, against 91% as drawn and 96%
  eroded), because a bold brush fills the loops of a 4, 6, 8 or 9 and the centre line of a filled loop is
  a line.

Everything else about width is left to training (fed_core/data/augment.py draws training digits thicker and
thinner).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_BOX, MNIST_BOX = 80, 20  # the digit's longer side, px, while measured; MNIST's: 4 work px per MNIST px
# 5th / 95th percentiles over MNIST's training digits (mnist_slant_range; tests/test_preprocess.py checks them).
SLANT_RANGE = (-0.61, 0.3)  # shear: x moves this much per px of y down (0.36 is 20 degrees); right-leaning < 0
# Narrowest and widest strokes kept as drawn, px at 28x28: measured best of 1.5 / 2.0 and of 3.0 / 3.5 / 4.0
# (bench/bench_drawing.py's rows, 500 digits).
MIN_WIDTH, MAX_WIDTH = 2.0, 3.5
INK = 0.5  # of full ink: what counts as stroke when measuring its width


def thin(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of bool images [..., H, W] to one-pixel centre lines, all images at once."""
    batch = binary.reshape(-1, *binary.shape[-2:])
    image = np.pad(batch, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
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
    return image[:, 1:-1, 1:-1].astype(bool).reshape(binary.shape)


def slant(ink: np.ndarray) -> float:
    """How far x moves per px of y along the ink's main axis (second moments): the deskew shear."""
    ys, xs = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]]
    mass = ink.sum()
    cy, cx = (ys * ink).sum() / mass, (xs * ink).sum() / mass
    mu02 = ((ys - cy) ** 2 * ink).sum()
    mu11 = ((ys - cy) * (xs - cx) * ink).sum()
    return float(mu11 / mu02) if mu02 > 0 else 0.0


def sheared(ink: np.ndarray, amount: float) -> np.ndarray:
    """x -> x + amount * (y - centre y), on a canvas widened so nothing is cut off."""
    height = ink.shape[0]
    extra = int(np.ceil(abs(amount) * height))
    wide = np.pad(ink, ((0, 0), (extra, extra)))
    centre = height / 2
    # affine_transform maps output coordinates to input ones: input x = output x - amount * (y - centre).
    matrix = np.array([[1.0, 0.0], [-amount, 1.0]])
    offset = np.array([0.0, amount * centre])
    return ndimage.affine_transform(wide, matrix, offset=offset, order=1).astype(np.float32)


def normalised(ink: np.ndarray) -> np.ndarray | None:
    """Float ink [H, W], longer side WORK_BOX, with slant and stroke width brought into MNIST's range; None when
    both already are (the drawing is then used as drawn, not resampled once more)."""
    skew = slant(ink)
    target = float(np.clip(skew, *SLANT_RANGE))
    changed = target != skew
    if changed:
        ink = sheared(ink, target - skew)
    ink = np.pad(ink, round(MIN_WIDTH * WORK_BOX / MNIST_BOX))  # room to grow; the caller crops to the ink
    stroke = ink > INK
    distance = ndimage.distance_transform_edt(stroke)
    width = stroke_width(stroke, distance) * MNIST_BOX / WORK_BOX
    excess = (width - MAX_WIDTH) * WORK_BOX / MNIST_BOX / 2  # work px each side
    if excess > 0:  # eroded: every pixel loses the excess half-width
        return np.clip(distance - excess, 0.0, 1.0).astype(np.float32)
    deficit = (MIN_WIDTH - width) * WORK_BOX / MNIST_BOX / 2
    if width > 0 and deficit > 0:  # dilated: ink within the missing half-width of the stroke
        grown = np.clip(deficit + 0.5 - ndimage.distance_transform_edt(~stroke), 0.0, 1.0)
        return np.maximum(ink, grown).astype(np.float32)
    return ink if changed else None


def stroke_width(stroke: np.ndarray, distance: np.ndarray) -> float:
    """Median width (px) of a bool stroke image, from its distance transform along its centre line."""
    line = thin(stroke)
    # At the centre of a band w px wide the distance to the nearest background pixel is (w + 1) / 2.
    return float(2 * np.median(distance[line]) - 1) if line.any() else 0.0


def mnist_slant_range(images: np.ndarray, low: float = 5, high: float = 95) -> tuple[float, float]:
    """Percentiles of the slants of uint8 [N, 28, 28] MNIST digits, measured as drawings are (at WORK_BOX px)."""
    slants = []
    for digit in images:
        rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
        box = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        factor = WORK_BOX / max(box.shape)
        size = (max(1, round(box.shape[1] * factor)), max(1, round(box.shape[0] * factor)))
        slants.append(slant(np.asarray(Image.fromarray(box).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)))
    return tuple(float(v) for v in np.percentile(slants, [low, high]))

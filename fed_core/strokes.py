"""A digit's centre line and slant, and the slant brought into MNIST's range.

MNIST's writers slanted their digits up to about 30 degrees right and 17 left (5th and 95th percentiles of
the training digits, measured as below); a hurried hand slants further, and the model then reads other
digits. So before a drawing is scaled to MNIST's 20 px box, its slant is measured at WORK_BOX px (4x that
box) as the shear of the ink's second moments (the classic MNIST deskew) and, when outside MNIST's range,
sheared back to the range's edge rather than to upright: the model learnt from slanted digits too.

Stroke width is left to training (fed_core/augment.py redraws training digits with thicker and thinner
strokes). Normalising it here measured worse: thinning a bold drawing to its centre line (thin below) and
redrawing it at MNIST's width read 82% of digits drawn with a 60 px brush right, against 93% as drawn,
because a bold brush fills the loops of a 4, 6, 8 or 9 and the centre line of a filled loop is a line.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_BOX = 80  # the digit's longer side, in px, while its slant is measured: 4x MNIST's 20 px box
# 5th / 95th percentiles over MNIST's training digits (mnist_slant_range; tests/test_preprocess.py checks them).
SLANT_RANGE = (-0.61, 0.3)  # shear: x moves this much per px of y down (0.36 is 20 degrees); right-leaning < 0


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


def deslanted(ink: np.ndarray) -> np.ndarray | None:
    """Float ink [H, W] sheared so its slant is within MNIST's range; None when it already is (the drawing is
    then used as drawn, not resampled once more)."""
    skew = slant(ink)
    target = float(np.clip(skew, *SLANT_RANGE))
    return None if target == skew else sheared(ink, target - skew)


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

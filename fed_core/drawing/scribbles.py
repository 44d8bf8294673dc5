"""Whether a drawing is a scribble (a drawing scratched out) rather than one digit, from the drawing alone.

The refusal happens on the user's side, before the digit is encrypted, so it may not ask the model: it looks at
the ink only, cropped to its bounding box (bool, at the canvas's resolution).

A scribble covers an area: zigzags fill 94% of their rectangle or more, 97% typically, and a block scribbled
in the browser 86% (its round ends). Drawn digits fill at most 85% of their box, but for compact bold digits
with a loop (an 8 drawn small with a broad brush: 86%) and bars: a thin stroke fills its box whatever the pen,
and a bold "1" (up to half as wide as tall) up to 93%, the round ends of its stroke leaving the corners empty.
So above OPEN_FILL only a drawing that encloses a hole passes.

The rectangle is the drawing's own, the smallest that holds it at any angle (one of its sides lies along an
edge of the ink's convex hull), not only the upright one: a zigzag scribbled at 45 degrees fills half its
upright box and all of its own rectangle, while a digit's own rectangle is at most about as full as its upright
box (a slanted "1" is a bar in its own frame, as an upright one is).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

OPEN_FILL, MAX_BOX_FILL, MAX_BOLD_ONE_FILL = 0.85, 0.88, 0.94
MIN_HOLE = 0.002  # of the bounding box: smaller enclosed gaps are slips of the pen, not a loop
THIN_BAR, BOLD_ONE = 0.3, 0.5  # short side / long side


def looks_scribbled(box: np.ndarray) -> bool:
    """Whether bool ink cropped to its bounding box fills a rectangle around it as only a scribble does."""
    return any(_too_full(box, height, width) for height, width in (box.shape, own_rectangle(box)))


def _too_full(box: np.ndarray, height: float, width: float) -> bool:
    fill, limit = box.sum() / (height * width), _max_fill(height, width)
    return fill > limit or (limit == MAX_BOX_FILL and fill > OPEN_FILL and not _has_loop(box))


def _max_fill(height: float, width: float) -> float:
    """How much of a rectangle of this shape a drawing may fill before it looks like a scribble."""
    if min(height, width) < THIN_BAR * max(height, width):
        return 1.0
    return MAX_BOLD_ONE_FILL if width < BOLD_ONE * height else MAX_BOX_FILL


def own_rectangle(box: np.ndarray) -> tuple[float, float]:
    """Height and width (px) of the smallest rectangle, at any angle, holding every ink pixel (a unit square) of
    the box; its height is the side nearer upright, so a bar leaning less than 45 degrees stands.

    The rectangle of least area has a side along an edge of the convex hull, so each edge's direction is tried.
    Only the corners of pixels on the ink's edge can be hull vertices.
    """
    edge = box & ~ndimage.binary_erosion(box)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)
    hull = corners[ConvexHull(corners).vertices]
    sides = np.roll(hull, -1, axis=0) - hull
    along = sides / np.hypot(*sides.T)[:, None]  # [edges, 2] unit vectors
    across = np.stack([-along[:, 1], along[:, 0]], 1)
    lengths = np.ptp(hull @ along.T, axis=0), np.ptp(hull @ across.T, axis=0)
    best = int(np.argmin(lengths[0] * lengths[1]))
    upright = abs(along[best, 1]) > abs(along[best, 0])
    side_along, side_across = float(lengths[0][best]), float(lengths[1][best])
    return (side_along, side_across) if upright else (side_across, side_along)


def _has_loop(box: np.ndarray) -> bool:
    """Whether the ink encloses background, as the loops of an 8, a 0 or a 6 do; a scribbled block does not."""
    background, count = ndimage.label(~box)
    edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    sizes = np.bincount(background.ravel(), minlength=count + 1)
    sizes[np.unique(edges)] = 0  # background reaching the box's edge is outside the digit, and label 0 is ink
    return sizes.max() >= MIN_HOLE * box.size

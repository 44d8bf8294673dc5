"""Whether a drawing is a scribble (a drawing scratched out) rather than one digit, from the drawing alone.

The refusal happens on the user's side, before the digit is encrypted, so it may not ask the model: it looks at
the ink only, cropped to its bounding box (bool, at the canvas's resolution).

A scribble covers an area: zigzags fill 94% of their rectangle or more, 97% typically, and a block scribbled
in the browser 86% (its round ends). Drawn digits fill at most 85% of their box, but for compact bold digits
with a loop (an 8 drawn small with a broad brush: 86%) and bars: a thin stroke fills its box whatever the pen,
and a bold "1" (up to half as wide as tall) up to 93%, the round ends of its stroke leaving the corners empty.
So above OPEN_FILL only a drawing that encloses a hole passes. A bar (short side under THIN_BAR of the long
one) may fill its rectangle as one stroke of a round brush does, 1 - (1 - pi/4) * short / long, its round
ends leaving the corners empty, and ROUND_END_SLACK more (a straight line's antialiased edge); a zigzag bar
fills nearly all of it. A bar cut by the canvas's edge has no round end to show, so it may fill all of it.

The rectangle is the drawing's own, the smallest that holds it at any angle (one of its sides lies along an
edge of the ink's convex hull), not only the upright one: a zigzag scribbled at 45 degrees fills half its
upright box and all of its own rectangle, while a digit's own rectangle is at most about as full as its upright
box (a slanted "1" is a bar in its own frame, as an upright one is).

Loops scratched over an area leave a blob, a mesh or a ring. A blob is refused (no digit but a bar is as
convex as its outline without enclosing even a pinhole), and so is a mesh with many enclosed gaps; a ring is, to any
measure of the ink alone, a bold 0 (one stroke around, or many side by side, leave the same band), so it
passes and is read as 0. Of bench/bench_drawing.py's loop scribbles, three in four are rings.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

OPEN_FILL, MAX_BOX_FILL, MAX_BOLD_ONE_FILL = 0.85, 0.88, 0.94
MIN_HOLE = 0.002  # of the bounding box: smaller enclosed gaps are slips of the pen, not a loop
THIN_BAR, BOLD_ONE = 0.3, 0.5  # short side / long side
# Straight lines of 4 to 60 px brushes, 60 to 240 px long, at any angle: at most 0.4% above a round-ended bar's fill.
ROUND_END_SLACK = 0.01
# Measured on bench/bench_drawing.py's drawings (200 MNIST test and 200 training digits, every row) against its
# loop scribbles: no digit that enclosed no gap at all filled more than 95% of its convex hull unless it was a
# bar (bold 8s whose loops the brush had filled did, but they kept a few pinholes), and none enclosed more
# than 12 gaps of any size.
MAX_BLOB_SOLIDITY, MANY_GAPS = 0.95, 20


def looks_scribbled(box: np.ndarray, cut: bool = False) -> bool:
    """Whether bool ink cropped to its bounding box is a scribble: it fills a rectangle around it, upright or
    its own, as only a scribble does; or it is a blob, a patch of ink as convex as its outline and too wide
    for a bar, enclosing not even a pinhole; or it encloses many gaps, left where ink was laid over ink many times."""
    gaps = _enclosed_gaps(box)
    has_loop = gaps.max(initial=0) >= MIN_HOLE * box.size
    corners = _edge_corners(box)
    hull = ConvexHull(corners)
    own = own_rectangle(corners[hull.vertices])
    if any(_too_full(box, height, width, has_loop, cut) for height, width in (box.shape, own)):
        return True
    blob = not len(gaps) and box.sum() > MAX_BLOB_SOLIDITY * hull.volume and min(own) >= BOLD_ONE * max(own)
    return blob or len(gaps) >= MANY_GAPS


def _too_full(box: np.ndarray, height: float, width: float, has_loop: bool, cut: bool) -> bool:
    fill, limit = box.sum() / (height * width), _max_fill(height, width, cut)
    return fill > limit or (limit == MAX_BOX_FILL and fill > OPEN_FILL and not has_loop)


def _max_fill(height: float, width: float, cut: bool) -> float:
    """How much of a rectangle of this shape a drawing may fill before it looks like a scribble."""
    aspect = min(height, width) / max(height, width)
    if aspect < THIN_BAR:
        return 1.0 if cut else 1 - (1 - np.pi / 4) * aspect + ROUND_END_SLACK
    return MAX_BOLD_ONE_FILL if width < BOLD_ONE * height else MAX_BOX_FILL


def _edge_corners(box: np.ndarray) -> np.ndarray:
    """(x, y) corners of the ink's edge pixels, each a unit square: the only points that can be on its hull
    (its area, ConvexHull.volume in 2-D, is then the area the pixels cover)."""
    ys, xs = np.nonzero(box & ~ndimage.binary_erosion(box))
    return np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)


def own_rectangle(hull: np.ndarray) -> tuple[float, float]:
    """Height and width of the smallest rectangle, at any angle, around a convex polygon [n, 2] (x, y); its
    height is the side nearer upright, so a bar leaning less than 45 degrees stands.

    The rectangle of least area has a side along an edge of the convex hull, so each edge's direction is tried.
    """
    sides = np.roll(hull, -1, axis=0) - hull
    along = sides / np.hypot(*sides.T)[:, None]  # [edges, 2] unit vectors
    across = np.stack([-along[:, 1], along[:, 0]], 1)
    lengths = np.ptp(hull @ along.T, axis=0), np.ptp(hull @ across.T, axis=0)
    best = int(np.argmin(lengths[0] * lengths[1]))
    upright = abs(along[best, 1]) > abs(along[best, 0])
    side_along, side_across = float(lengths[0][best]), float(lengths[1][best])
    return (side_along, side_across) if upright else (side_across, side_along)


def _enclosed_gaps(box: np.ndarray) -> np.ndarray:
    """Sizes (px) of the background areas the ink encloses: the loops of an 8, a 0 or a 6, and smaller gaps."""
    background, count = ndimage.label(~box)
    edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    sizes = np.bincount(background.ravel(), minlength=count + 1)
    sizes[np.unique(edges)] = 0  # background reaching the box's edge is outside the digit, and label 0 is ink
    return sizes[sizes > 0]

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from devtools import drawn
from fed_core.data.mnist import load_mnist, normalize
from fed_core.drawing import preprocess as preprocess
from fed_core.drawing import strokes as strokes
from fed_core.drawing.preprocess import DrawingError, prepare_digit, read_image
from fed_core.models import load_model

CANVAS = 280


@pytest.fixture(scope="module")
def mnist_digit() -> np.ndarray:
    return load_mnist().test_images[0].numpy()  # a 7


def canvas_with(digit: np.ndarray, scale: int, top: int, left: int) -> np.ndarray:
    """An opaque RGBA canvas, black background, with the digit enlarged and placed anywhere."""
    big = np.kron(digit, np.ones((scale, scale), dtype=np.uint8))
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    canvas[top : top + big.shape[0], left : left + big.shape[1], :3] = big[..., None]
    return canvas


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:28, 0:28]
    return (ys * pixels).sum() / pixels.sum(), (xs * pixels).sum() / pixels.sum()


def bounding_box(pixels: np.ndarray, level: int = 50) -> tuple[int, int]:
    rows, cols = np.flatnonzero((pixels > level).any(1)), np.flatnonzero((pixels > level).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("scale,top,left", [(9, 10, 20), (4, 150, 160), (6, 0, 112)])
def test_shifted_or_rescaled_digit_is_centred_the_mnist_way(mnist_digit, scale, top, left):
    digit = prepare_digit(canvas_with(mnist_digit, scale, top, left))
    cy, cx = centre_of_mass(digit.pixels.astype(float))
    assert abs(cy - 14) < 0.6 and abs(cx - 14) < 0.6
    assert max(bounding_box(digit.pixels)) in (19, 20)
    # It is still the same MNIST digit, which was made by the same recipe.
    assert np.abs(digit.pixels.astype(float) - mnist_digit).mean() < 12


def test_output_is_normalised_like_training(mnist_digit):
    digit = prepare_digit(canvas_with(mnist_digit, 5, 40, 40))
    assert digit.pixels.dtype == np.uint8 and digit.pixels.shape == (28, 28)
    assert digit.tensor.shape == (1, 1, 28, 28)
    torch.testing.assert_close(digit.tensor, normalize(torch.from_numpy(digit.pixels)[None]))


def test_transparent_canvas_uses_alpha_whatever_the_stroke_colour(mnist_digit):
    opaque = canvas_with(mnist_digit, 8, 30, 30)
    transparent = np.zeros_like(opaque)
    transparent[..., 0] = 200  # a red-ish stroke colour everywhere; only alpha marks the ink
    transparent[..., 3] = opaque[..., 0]
    np.testing.assert_array_equal(prepare_digit(transparent).pixels, prepare_digit(opaque).pixels)


def test_dark_ink_on_white_paper_is_inverted(mnist_digit):
    white_paper = 255 - canvas_with(mnist_digit, 8, 30, 30)[..., :3]
    expected = prepare_digit(canvas_with(mnist_digit, 8, 30, 30)).pixels
    np.testing.assert_array_equal(prepare_digit(white_paper).pixels, expected)


def test_image_file_round_trip(tmp_path, mnist_digit):
    path = tmp_path / "digit.png"
    Image.fromarray(np.kron(mnist_digit, np.ones((5, 5), dtype=np.uint8))).save(path)
    assert read_image(path).shape == (140, 140, 3)
    assert prepare_digit(read_image(path)).pixels.max() > 200


def blob_canvas(size: int) -> np.ndarray:
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    canvas[100 : 100 + size, 100 : 100 + size, :3] = 255
    return canvas


def brushed(points: list[tuple[int, int]], width: int) -> np.ndarray:
    """An opaque canvas with one white stroke of a round brush through the points, as the Draw page records it."""
    image = Image.new("L", (CANVAS, CANVAS))
    draw = ImageDraw.Draw(image)
    draw.line(points, fill=255, width=width, joint="curve")
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    canvas[..., :3] = np.asarray(image)[..., None]
    canvas[..., 3] = 255
    return canvas


def zigzag(left: int, top: int, width: int, height: int, brush: int) -> np.ndarray:
    """A scribble: back and forth across a box, each pass overlapping the last."""
    points = []
    for i, y in enumerate(range(top, top + height + 1, brush - 4)):
        ends = (left, left + width) if i % 2 == 0 else (left + width, left)
        points += [(ends[0], y), (ends[1], y)]
    return brushed(points, brush)


@pytest.mark.parametrize("index", [8065, 8078, 2473], ids=["bold 8", "bold 1", "bold slanted 1"])
def test_bold_mnist_digits_are_not_scribbles(mnist, index):
    """MNIST test digits written with a broad pen: they fill 86-93% of their box."""
    digit = mnist.test_images[index].numpy()
    assert prepare_digit(canvas_with(digit, 10, 0, 0)).pixels.max() > 200


def test_short_bold_one_is_not_a_scribble():
    # A 30 px brush, 50 px down: a bar 81 x 31 px that fills 90% of its box, all but the corners.
    assert prepare_digit(brushed([(140, 115), (140, 165)], 30)).pixels.max() > 200


@pytest.mark.parametrize(
    "left,top,width,height,brush",
    [(80, 80, 120, 120, 18), (110, 50, 60, 180, 18), (60, 110, 160, 60, 24), (100, 90, 70, 100, 30)],
    ids=["square", "upright band, shaped like a bold 1", "level band", "small, broad brush"],
)
def test_brushed_scribbles_are_refused(left, top, width, height, brush):
    with pytest.raises(DrawingError, match="scribble"):
        prepare_digit(zigzag(left, top, width, height, brush))


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8), "empty"),
        (np.full((CANVAS, CANVAS, 4), 255, dtype=np.uint8), "ink almost everywhere"),
        (blob_canvas(12), "only a dot"),
        (blob_canvas(120), "scribble"),
        (np.zeros((CANVAS, CANVAS, 2), dtype=np.uint8), "grayscale, RGB or RGBA"),
        (np.zeros((8, 8), dtype=np.uint8), "between 16 and 4096"),
        (np.zeros((CANVAS, CANVAS), dtype=np.int32), "8-bit"),
    ],
    ids=["empty", "all ink", "dot", "scribble", "two channels", "too small", "int32"],
)
def test_bad_images_get_a_friendly_error(image, message):
    with pytest.raises(DrawingError, match=message):
        prepare_digit(image)


def test_unreadable_files_get_a_friendly_error(tmp_path):
    with pytest.raises(DrawingError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(DrawingError, match="not an image"):
        read_image(not_an_image)


def test_a_block_scribbled_in_the_browser_is_refused():
    """Chromium's canvas PNG of the browser test's zigzag: 86% of its box, as a bold 8, but with no loop."""
    with pytest.raises(DrawingError, match="scribble"):
        prepare_digit(read_image(Path(__file__).parent / "fixtures" / "browser_scribble.png"))


# --- stroke width and slant brought into MNIST's range (fed_core/drawing/strokes.py) ---------------------------------


def work_ink(canvas: np.ndarray) -> np.ndarray:
    """The drawing's ink as fed_core.drawing.strokes gets it: cropped, longer side WORK_BOX px."""
    ink = preprocess.ink_map(canvas)
    return preprocess._resized(ink[preprocess._ink_box(ink)], strokes.WORK_BOX)


def test_a_strongly_slanted_drawing_is_brought_back_to_mnist_slants():
    one = brushed([(50, 260), (230, 20)], 18)  # a "1" leaning 37 degrees right
    ink = work_ink(one)
    assert strokes.slant(ink) < strokes.SLANT_RANGE[0] - 0.1
    assert strokes.slant(strokes.normalised(ink)) == pytest.approx(strokes.SLANT_RANGE[0], abs=0.03)


def test_a_digit_already_in_range_is_used_as_drawn(mnist):
    two = mnist.test_images[1].numpy()  # strokes 2.25 px wide, slant -0.2
    assert strokes.normalised(work_ink(canvas_with(two, 8, 20, 20))) is None


def test_a_fine_brush_is_widened_to_the_narrowest_stroke_kept():
    ink = work_ink(brushed([(170, 40), (80, 170), (210, 170)], 6) | brushed([(165, 90), (165, 250)], 6))
    assert width_28(ink) < strokes.MIN_WIDTH - 0.5
    assert width_28(strokes.normalised(ink)) == pytest.approx(strokes.MIN_WIDTH, abs=0.4)


def width_28(ink: np.ndarray) -> float:
    stroke = np.pad(ink > strokes.INK, 1)
    width = strokes.stroke_width(stroke, ndimage.distance_transform_edt(stroke))
    return width * strokes.MNIST_BOX / strokes.WORK_BOX


@pytest.mark.parametrize("width", [60, 75])
def test_a_bold_brush_is_eroded_to_mnists_widest_stroke(width):
    four = brushed([(170, 40), (80, 170), (210, 170)], width) | brushed([(165, 90), (165, 250)], width)
    ink = work_ink(four)
    assert width_28(ink) > strokes.MAX_WIDTH + 0.5
    assert width_28(strokes.normalised(ink)) == pytest.approx(strokes.MAX_WIDTH, abs=0.4)


def test_the_slant_range_is_mnists(mnist):
    """The constants are the 5th and 95th percentiles of MNIST's training digits (a sample of 2,000)."""
    low, high = strokes.mnist_slant_range(mnist.train_images[:2000].numpy())
    assert low == pytest.approx(strokes.SLANT_RANGE[0], abs=0.05)
    assert high == pytest.approx(strokes.SLANT_RANGE[1], abs=0.05)


@pytest.fixture(scope="module")
def pretrained():
    return load_model(Path(__file__).resolve().parent.parent / "assets" / "pretrained_crypto_cnn.pt")[0]


@pytest.mark.parametrize(
    "label,paths,width",
    [
        (4, [[(170, 40), (80, 170), (210, 170)], [(165, 90), (165, 250)]], 55),
        (1, [[(140, 30), (140, 250)]], 60),
        (7, [[(60, 40), (220, 40), (120, 250)]], 55),
    ],
    ids=["bold 4", "bold 1", "bold 7"],
)
def test_bold_digits_are_read_right(pretrained, label, paths, width):
    """What the issue saw on a projector: a bold 4 read as 6, a bold 1 as 8."""
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    for path in paths:
        canvas |= brushed(path, width)
    with torch.no_grad():
        assert pretrained(prepare_digit(canvas).tensor).argmax().item() == label


# --- scribbles judged in their own frame, blobs and meshes of loops (fed_core/drawing/scribbles.py) -----------------


def loop_path(radius: float, drift: float, turns: int, tilt_degrees: float) -> np.ndarray:
    """Loops drifting sideways (x, y canvas px), tilted, centred on the canvas: scratching a drawing out."""
    t = np.linspace(0, 2 * np.pi * turns, 60 * turns)
    points = np.stack([np.linspace(0, drift, len(t)) + radius * np.cos(t), 0.9 * radius * np.sin(t)], 1)
    angle = np.radians(tilt_degrees)
    points = points @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    return points - points.mean(0) + CANVAS / 2


@pytest.mark.parametrize("degrees", [20, 45, 70])
def test_a_slanted_zigzag_is_refused(degrees):
    """Half its upright box is empty, but it fills its own rectangle as a level zigzag fills its box."""
    angle = np.radians(degrees)
    passes = [(x, y) for i, y in enumerate(range(0, 101, 14)) for x in ((0, 150) if i % 2 == 0 else (150, 0))]
    points = np.array(passes, dtype=float) @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    canvas = drawn.stroke(points - points.mean(0) + CANVAS / 2, 20)
    assert preprocess.ink_map(canvas)[:, 100].any()  # drawn where expected
    with pytest.raises(DrawingError, match="scribble"):
        prepare_digit(canvas)


@pytest.mark.parametrize(
    "radius,drift,turns,brush",
    [(30, 60, 8, 28), (60, 150, 12, 8)],
    ids=["blob: loops filling an area", "mesh: loops leaving many gaps"],
)
def test_loop_scribbles_are_refused(radius, drift, turns, brush):
    with pytest.raises(DrawingError, match="scribble"):
        prepare_digit(drawn.stroke(loop_path(radius, drift, turns, 30), brush))


def test_a_zigzag_bar_is_refused_but_a_straight_stroke_is_not():
    """Both are bars; one stroke of a round brush leaves its rectangle's corners empty, a zigzag does not."""
    with pytest.raises(DrawingError, match="scribble"):
        prepare_digit(zigzag(40, 110, 200, 40, 20))  # three passes, 220 x 60 px
    for width in (8, 30, 60):
        assert prepare_digit(brushed([(140, 40), (140, 240)], width)).pixels.max() > 200


def test_a_bar_cut_by_the_canvas_edge_is_not_a_scribble():
    """Drawn off the canvas, a "1" has flat ends and fills its rectangle: its ends are not seen, so it passes."""
    assert prepare_digit(brushed([(140, -40), (140, CANVAS + 40)], 40)).pixels.max() > 200


@pytest.fixture(scope="module")
def drawn_mnist(mnist) -> list[tuple[int, int, np.ndarray]]:
    """(brush, label, canvas): the first 40 MNIST test digits drawn at every brush width the benchmark tries."""
    widths = (8, 12, 18, 24, 30, 40, 50, 60)
    table = [drawn.Row(f"brush {w}", w, 0.7, 0) for w in widths]
    labels = mnist.test_labels[:40].tolist()
    canvases = drawn.drawn_digits(mnist.test_images[:40], table)
    return [(widths[i], labels[n // len(widths)], canvas) for n, (i, canvas) in enumerate(canvases)]


def test_real_digits_at_every_brush_are_not_refused(drawn_mnist):
    refused = []
    for width, label, canvas in drawn_mnist:
        try:
            prepare_digit(canvas)
        except DrawingError:
            refused.append((width, label))
    assert not refused

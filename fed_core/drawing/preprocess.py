"""Turn a drawing or an image file into an MNIST-like 28x28 digit.

MNIST's own recipe: crop to the ink, scale the longer side to 20 px (antialiased, aspect
kept), then translate so the centre of mass lands on pixel (14, 14) of a 28x28 field.
Ink is white on black. The result is normalised exactly like the training images.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fed_core.data.mnist import normalize
from fed_core.drawing.scribbles import looks_scribbled
from fed_core.drawing.strokes import WORK_BOX, normalised
from fed_core.vocabulary import UserError

SIDE, DIGIT_BOX = 28, 20
MIN_SIDE, MAX_SIDE = 16, 4096
# The Draw page's canvas: its PNG is CANVAS_SIDE px a side times the device-pixel ratio it was exported at
# (streamlit-drawable-canvas 0.13's frontend calls toDataURL with multiplier 1, so 280; ratios up to 4, as on
# phones, are allowed so an export at the screen's resolution would still be read).
CANVAS_SIDE, MAX_PIXEL_RATIO = 280, 4
MAX_CANVAS_PNG_BYTES = 2_000_000  # a 1120 px drawing compresses to ~100 kB; even noise at 1120 px is 5 MB raw
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a browser's canvas.toDataURL writes, and the colour chunks other encoders add; never text or animation.
PNG_IMAGE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"sRGB", b"gAMA", b"cHRM", b"pHYs", b"iCCP"})
INK_LEVEL = 0.2  # a pixel darker than this (0..1 ink scale) is background
MAX_CANVAS_COVERAGE = 0.6
MIN_DIGIT_FRACTION = 0.1  # of the image's shorter side


class DrawingError(UserError, ValueError):
    """The image cannot be read as one digit; the message tells the user what to change."""


@dataclass(frozen=True)
class PreparedDigit:
    pixels: np.ndarray  # uint8 [28, 28], white ink on black, what the model sees
    tensor: torch.Tensor  # float [1, 1, 28, 28], normalised like training


def read_image(source: Path | str | BinaryIO) -> np.ndarray:
    """An image file (a path, or an open binary file) -> uint8 array: HxWx4 if it has transparency, else HxWx3.

    The size in the file's header is checked before any pixel is decoded: a small file can claim to be
    20000x20000 (a "decompression bomb") and would need gigabytes once decoded.
    """
    name = str(source) if isinstance(source, (str, Path)) else "The image"
    return _decoded(source, name, MAX_SIDE, formats=None)


def read_canvas_png(data: object) -> np.ndarray:
    """What the Draw page's canvas sent -> uint8 HxWx4 (or HxWx3), refusing anything the canvas cannot make.

    The canvas is a bidirectional component, so any websocket client can send any value in its place: this is
    where untrusted bytes first meet the server. Only a PNG is accepted, square and CANVAS_SIDE times a
    device-pixel ratio of 1 to MAX_PIXEL_RATIO a side, with only the chunks an image needs (no text or
    animation chunks, which PIL would inflate up to 64 MB in all); all this is read from the chunk headers
    before PIL decodes a pixel. A 4096x4096 ring of 88 kB, which decoded cost over 600 MB, is refused from
    its first 24 bytes.
    """
    if not isinstance(data, bytes | bytearray):
        raise DrawingError("The canvas sent something other than an image: press Clear and draw again.")
    if len(data) > MAX_CANVAS_PNG_BYTES:
        raise DrawingError(
            f"The canvas sent {len(data) / 1e6:.1f} MB; a drawing is at most {MAX_CANVAS_PNG_BYTES / 1e6:.0f} MB."
        )
    data = bytes(data)
    width, height = png_size(data)
    low, high = CANVAS_SIDE, CANVAS_SIDE * MAX_PIXEL_RATIO
    if width != height or not low <= width <= high:
        raise DrawingError(
            f"The canvas sent a {width}x{height} image; the canvas makes square ones of {low} to {high} px a side."
        )
    _check_png_chunks(data)
    return _decoded(io.BytesIO(data), "The canvas image", high, formats=["PNG"])


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk (its first 24 bytes), without decoding anything."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise DrawingError("The canvas sent something that is not a PNG image: press Clear and draw again.")
    return struct.unpack(">II", data[16:24])


def _check_png_chunks(data: bytes) -> None:
    """Every chunk is one an image needs, none but IDAT repeats, and the last is IEND, all within the data."""
    seen, offset = set(), len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind not in PNG_IMAGE_CHUNKS or (kind in seen and kind != b"IDAT"):
            raise DrawingError(f"The canvas image holds a {kind!r} chunk the canvas never writes: press Clear.")
        seen.add(kind)
        offset += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return
    raise DrawingError("The canvas image is cut short: press Clear and draw again.")


def _decoded(source: Path | str | BinaryIO, name: str, max_side: int, formats: list[str] | None) -> np.ndarray:
    """Open (lazily: only the header is read), check the size, then decode to uint8 RGBA or RGB."""
    try:
        with Image.open(source, formats=formats) as image:
            width, height = image.size
            if width > max_side or height > max_side:
                raise DrawingError(f"{name} is {width}x{height} px; use one at most {max_side} px a side.")
            array = np.asarray(_shrunk(image).convert("RGBA"))
    except DrawingError:
        raise
    except FileNotFoundError as exc:
        raise DrawingError(f"Image file {name} does not exist.") from exc
    except Image.DecompressionBombError as exc:
        raise DrawingError(f"{name} claims to be far too large to open; use one at most {max_side} px a side.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL raises OSError for truncated data, SyntaxError and ValueError for broken chunks.
        raise DrawingError(f"{name} is not an image file PIL can read.") from exc
    # An opaque file is a photo or scan, not a canvas: let the border decide what is ink.
    return array if array[..., 3].min() < 255 else array[..., :3]


def _shrunk(image: Image.Image) -> Image.Image:
    """At most the largest canvas's side: a bigger photo or scan is box-averaged down while still 8-bit, so what
    follows never holds more than a 1120x1120 RGBA copy (a 4096 px file peaked at 274 MB without this)."""
    factor = -(-max(image.size) // (CANVAS_SIDE * MAX_PIXEL_RATIO))
    if factor == 1:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA")
    return image.reduce(factor)


def ink_map(image: np.ndarray) -> np.ndarray:
    """Any supported image -> uint8 [H, W] ink amount (255 = full stroke).

    RGBA is a canvas: where it has transparency the alpha channel is the ink, whatever
    the stroke colour; fully opaque, light strokes on a dark background are the ink.
    RGB and grayscale: brightness on a dark background, darkness on a light one (pencil
    on paper), judged by the border, which a centred digit leaves empty.
    Everything stays 8-bit: a 4096x4096 RGBA file costs 16 MB here, where float64 cost 537 MB.
    """
    array = _as_uint8(image)
    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[..., 3]
        return alpha if alpha.min() < 255 else array[..., :3].max(axis=2)
    colour = array if array.ndim == 3 else array[..., None]
    bright = colour.max(axis=2)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    return 255 - colour.min(axis=2) if np.median(border) > 127 else bright


def prepare_digit(image: np.ndarray) -> PreparedDigit:
    """Canvas RGBA / RGB / grayscale array -> the 28x28 digit the model sees.

    The ink is cropped and shrunk to WORK_BOX px while still 8-bit; float work starts there. A slant or a
    stroke width beyond MNIST's range is brought back to it (drawing.strokes), and MNIST's recipe does the rest.
    """
    ink = ink_map(image)
    box = _ink_box(ink)
    work = normalised(_resized(ink[box], WORK_BOX))
    digit = ink[box] if work is None else _cropped(work)
    pixels = _centre_by_mass(_resized(digit, DIGIT_BOX))
    return PreparedDigit(pixels=pixels, tensor=normalize(torch.from_numpy(pixels)[None]))


def _as_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DrawingError(f"Expected a grayscale, RGB or RGBA image, got an array of shape {array.shape}.")
    height, width = array.shape[:2]
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise DrawingError(f"The image is {width}x{height} px; use one between {MIN_SIDE} and {MAX_SIDE} px a side.")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0.0 and array.max() <= 1.0:
        return np.round(array * 255).astype(np.uint8)
    raise DrawingError(f"Expected 8-bit pixels (or floats in 0..1), got {array.dtype}.")


def _ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the ink, after checking the drawing looks like one digit."""
    mask = ink > round(INK_LEVEL * 255)
    if not mask.any():
        raise DrawingError("The canvas is empty: draw a digit first.")
    if mask.mean() > MAX_CANVAS_COVERAGE:
        raise DrawingError("There is ink almost everywhere: clear the canvas and draw one digit.")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if max(height, width) < MIN_DIGIT_FRACTION * min(ink.shape):
        raise DrawingError("That is only a dot: draw the digit larger, filling most of the canvas.")
    cut = rows[0] == 0 or cols[0] == 0 or rows[-1] == mask.shape[0] - 1 or cols[-1] == mask.shape[1] - 1
    if looks_scribbled(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], cut):
        raise DrawingError("That looks like a scribble: clear the canvas and draw one digit with a few strokes.")
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _resized(ink: np.ndarray, side: int) -> np.ndarray:
    """Scale so the longer side is ``side`` px, keeping the aspect ratio, with antialiasing -> float32 0..1.

    uint8 ink is resized as 8-bit (the canvas-sized step); float32 ink (already small) as float.
    """
    height, width = ink.shape
    factor = side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    return np.clip(resized / 255 if ink.dtype == np.uint8 else resized, 0.0, 1.0)


def _cropped(ink: np.ndarray) -> np.ndarray:
    """Cut to the ink's bounding box again: shearing and thinning move the ink's edges within its frame."""
    mask = ink > INK_LEVEL / 4
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place in a 28x28 field with the centre of mass on (14, 14), staying inside the field."""
    height, width = digit.shape
    ys, xs = np.mgrid[0:height, 0:width]
    mass = digit.sum()
    top = _offset(SIDE // 2 - (ys * digit).sum() / mass, height)
    left = _offset(SIDE // 2 - (xs * digit).sum() / mass, width)
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return np.round(field * 255).astype(np.uint8)


def _offset(ideal: float, extent: int) -> int:
    return int(np.clip(round(ideal), 0, SIDE - extent))

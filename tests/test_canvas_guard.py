"""Issue 16, item 1: the memory bomb through the Draw canvas, mounted against read_canvas_png and the page.

The canvas is a bidirectional component, so any websocket client can send any value as the drawing. The attack:
an 88 kB PNG of a ring on a 4096x4096 transparent canvas, which the page used to decode, convert to RGBA and
then to float64 (over 600 MB per message). Now only what the canvas can produce is decoded.
"""

import base64
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from test_encrypted_pages import button, canvas_value, page

from fed_core.data.mnist import load_mnist
from fed_core.drawing.preprocess import DrawingError, prepare_digit, read_canvas_png
from fed_core.models import load_model
from ui import session
from ui.encrypted_common import PRETRAINED_PATH

ROOT = Path(__file__).resolve().parent.parent
MEMORY_LIMIT_MB = 20


@pytest.fixture(scope="module")
def ring_png() -> bytes:
    """The attack as reported: a ring on a 4096x4096 transparent canvas, a small PNG."""
    image = Image.new("LA", (4096, 4096))
    ImageDraw.Draw(image).ellipse((600, 600, 3500, 3500), outline=(255, 255), width=300)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_of(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def drawn_seven(side: int) -> np.ndarray:
    """A canvas at a device-pixel ratio of side / 280: black, opaque, MNIST's first test digit (a 7) drawn large."""
    seven = load_mnist().test_images[0].numpy()
    scale = side * 6 // 280
    big = np.kron(seven, np.ones((scale, scale), dtype=np.uint8))
    canvas = np.zeros((side, side, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    top = side // 6
    canvas[top : top + big.shape[0], top : top + big.shape[1], :3] = big[..., None]
    return canvas


def with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """The PNG with one more chunk right after IHDR (which ends at byte 33)."""
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return png[:33] + chunk + png[33:]


def peak_growth_mb(png_path: Path, reader: str) -> float:
    """Peak RSS growth of a fresh process that hands the file's bytes to a reader six times (six sessions).

    The peak (VmHWM) is reset to the current RSS first (Linux's /proc/self/clear_refs), so the imports' own
    peak does not hide or inflate what the reader costs.
    """
    script = f"""
import io
from fed_core.drawing.preprocess import DrawingError, prepare_digit, read_canvas_png, read_image
data = open({str(png_path)!r}, "rb").read()
def status(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
for _ in range(6):
    try:
        prepare_digit({reader})
    except DrawingError:
        pass
print((status("VmHWM") - before) / 1e6)
"""
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return float(out.stdout.strip())


def test_the_ring_is_a_real_4096_image(ring_png):
    """The attack file is what the report describes: small, and any PIL-based reader would open it."""
    assert len(ring_png) < 200_000
    assert Image.open(io.BytesIO(ring_png)).size == (4096, 4096)


def test_the_ring_is_refused_from_its_header(ring_png):
    with pytest.raises(DrawingError, match="4096x4096 image; the canvas makes square ones of 280 to 1120 px"):
        read_canvas_png(ring_png)


def test_six_rings_grow_the_server_by_less_than_20_mb(ring_png, tmp_path):
    path = tmp_path / "ring.png"
    path.write_bytes(ring_png)
    growth = peak_growth_mb(path, "read_canvas_png(data)")
    print(f"six rings: peak RSS growth {growth:.1f} MB")
    assert growth < MEMORY_LIMIT_MB
    # Control: the same bytes decoded as an image file (the CLI's path, up to 4096 px) do cost memory, so the
    # measurement would see a decode; the old page also converted to float64, 537 MB more.
    control = peak_growth_mb(path, "read_image(io.BytesIO(data))")
    print(f"the same bytes decoded as a file: peak RSS growth {control:.1f} MB")
    assert control > 3 * MEMORY_LIMIT_MB


@pytest.mark.parametrize(
    "data,message",
    [
        (png_of(np.zeros((1400, 1400, 4), dtype=np.uint8)), "1400x1400 image"),
        (png_of(np.zeros((280, 300, 4), dtype=np.uint8)), "300x280 image"),
        (png_of(np.zeros((140, 140, 4), dtype=np.uint8)), "140x140 image"),
        (b"GIF89a" + bytes(100), "not a PNG"),
        (b"", "not a PNG"),
        ("data:image/png;base64,AAAA", "other than an image"),
        (png_of(np.zeros((280, 280, 4), dtype=np.uint8))[:60], "cut short"),
        (png_of(np.zeros((280, 280, 4), dtype=np.uint8))[:33] + b"\x00\x00\x00\x0dIEND" + bytes(17), "not an image"),
        (
            with_chunk(
                png_of(np.zeros((280, 280, 4), dtype=np.uint8)), b"zTXt", b"k\x00\x00" + zlib.compress(bytes(10**6))
            ),
            "zTXt",
        ),
        (with_chunk(png_of(np.zeros((280, 280, 4), dtype=np.uint8)), b"acTL", bytes(8)), "acTL"),
        (bytes(2_000_001), "2.0 MB"),
    ],
    ids=[
        "too big",
        "not square",
        "too small",
        "GIF",
        "empty",
        "a string",
        "truncated",
        "no pixel data",
        "text bomb",
        "animated",
        "too many bytes",
    ],
)
def test_what_the_canvas_cannot_make_is_refused_with_a_message(data, message):
    with pytest.raises(DrawingError, match=message):
        read_canvas_png(data)


@pytest.mark.parametrize("side", [280, 560, 1120])
def test_a_canvas_at_any_pixel_ratio_is_still_read(side):
    model, _ = load_model(PRETRAINED_PATH)
    image = read_canvas_png(png_of(drawn_seven(side)))
    assert image.shape[:2] == (side, side)
    digit = prepare_digit(image)
    with torch.no_grad():
        assert model(digit.tensor).argmax().item() == 7


def forged(data: object) -> dict:
    return {"drawing": {"raw": {"objects": []}, "data": data}, "backgroundFit": None}


@pytest.fixture
def draw_page():
    at = page("pages/2_Draw.py").run()
    button(at, "Use the small pretrained model").click().run()
    return at


def test_the_page_refuses_the_ring_with_a_message(draw_page, ring_png):
    at = draw_page
    at.session_state["canvas_0"] = forged("data:image/png;base64," + base64.b64encode(ring_png).decode())
    at.run()
    assert any("Preview: The canvas sent a 4096x4096 image" in c.value for c in at.caption)
    button(at, "Classify").click().run()
    assert not at.exception and not at.error
    assert "4096x4096" in at.warning[0].value
    assert session.DRAW_RESULT not in at.session_state


@pytest.mark.parametrize(
    "value",
    [forged("data:image/png;base64,!!not base64!!"), forged("no data url"), forged(12), {"drawing": ["a", "list"]}],
    ids=["bad base64", "no base64 part", "a number", "a list"],
)
def test_the_page_refuses_values_the_canvas_cannot_send(draw_page, value):
    at = draw_page
    at.session_state["canvas_0"] = value
    button(at.run(), "Classify").click().run()
    assert not at.exception and not at.error
    assert "press Clear" in at.warning[0].value


def test_each_distinct_drawing_is_prepared_once(draw_page, monkeypatch):
    calls = []
    real = prepare_digit

    def counted(image):
        calls.append(image.shape)
        return real(image)

    monkeypatch.setattr("fed_core.drawing.preprocess.prepare_digit", counted)
    at = draw_page
    at.session_state["canvas_0"] = canvas_value(drawn_seven(280))
    at.run().run()
    button(at, "Classify").click().run()
    assert not at.exception and len(calls) == 1
    at.session_state["canvas_0"] = canvas_value(drawn_seven(560))
    at.run()
    assert len(calls) == 2

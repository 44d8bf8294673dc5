"""The Draw and Encrypted Test pages, run by Streamlit's AppTest (no browser).

The canvas is a custom component AppTest cannot draw on, but its value lives in session
state under the canvas key: setting it there is exactly what the browser would send.
"""

import ast
import base64
import io
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_cli import png_claiming

from fed_core.data.mnist import load_mnist
from fed_core.encrypted import SCHEMES, DigitResult, EvalResult
from fed_core.encrypted.base import Communication, ServerView
from fed_core.models import build_model
from ui import session
from ui.common import heavy_task_gate
from ui.encrypted_common import PRETRAINED_PATH, he_key_cache
from ui.encrypted_views import showcase_indices

ROOT = Path(__file__).resolve().parent.parent
SIDE = 280


def page(path: str) -> AppTest:
    """A page as Streamlit serves it: app.py is the entrypoint, so page links resolve."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(path)
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def canvas_value(rgba: np.ndarray) -> dict:
    """What streamlit-drawable-canvas sends back: the drawing as a PNG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"drawing": {"raw": {"objects": []}, "data": url}, "backgroundFit": None}


def drawing(pixels: np.ndarray | None = None) -> np.ndarray:
    """A black 280x280 canvas, with an MNIST digit drawn large in white if given."""
    canvas = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    if pixels is not None:
        big = np.kron(pixels, np.ones((6, 6), dtype=np.uint8))
        canvas[50 : 50 + big.shape[0], 70 : 70 + big.shape[1], :3] = big[..., None]
    return canvas


@pytest.fixture(scope="module")
def seven() -> np.ndarray:
    mnist = load_mnist()
    assert mnist.test_labels[0] == 7
    return mnist.test_images[0].numpy()


@pytest.fixture
def draw_page() -> AppTest:
    at = page("pages/2_Draw.py").run()
    button(at, "Use the small pretrained model").click().run()
    return at


def test_without_a_model_one_click_loads_the_pretrained_one():
    assert PRETRAINED_PATH.exists()
    at = page("pages/2_Draw.py").run()
    assert not at.exception
    assert "no trained model" in at.info[0].value
    assert not any(b.label == "Classify" for b in at.button)
    button(at, "Use the small pretrained model").click().run()
    assert at.session_state[session.TRAINED_MODEL]["meta"]["model"] == "crypto_cnn"
    assert any("pretrained" in c.value for c in at.caption)
    assert "Classify" in [b.label for b in at.button]


@pytest.mark.parametrize("path", ["pages/2_Draw.py", "pages/3_Encrypted_Test.py"])
def test_a_non_encryptable_model_is_refused_with_the_accepted_ones(path):
    at = page(path)
    at.session_state[session.TRAINED_MODEL] = {"model": build_model("relu_cnn").eval(), "meta": {"model": "relu_cnn"}}
    at.run()
    assert not at.exception
    assert "accept only: Crypto-friendly CNN" in at.info[0].value
    assert "Use the small pretrained model" in [b.label for b in at.button]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_drawn_digit_is_classified_encrypted_step_by_step(draw_page, seven, scheme):
    at = draw_page
    at.radio[0].set_value(scheme)
    at.session_state["canvas_0"] = canvas_value(drawing(seven))
    button(at.run(), "Classify").click().run()
    assert not at.exception and not at.error and not at.warning
    assert metric(at, "Prediction") == "7" and metric(at, "Plaintext model") == "7"
    assert len(at.get("plotly_chart")) == 1
    subheaders = [s.value for s in at.subheader]
    assert subheaders[0] == "1 · What the model sees" and subheaders[-1] == "4 · Decrypted on your side"
    if scheme == "he":
        assert he_key_cache().get(at.session_state[session.HE_KEY_ID])["server"]  # kept for the next digit
        assert any("released after 10 min without use" in c.value for c in at.caption)
        assert at.code  # a glimpse of the ciphertext
        assert "secret key included: **False**" in "".join(m.value for m in at.markdown)
    else:
        assert "2 · Split into two random shares" in subheaders


@pytest.mark.parametrize(
    "canvas,message",
    [(None, "empty"), (drawing(), "empty"), (drawing(np.full((2, 2), 255, dtype=np.uint8)), "dot")],
    ids=["untouched", "blank", "dot"],
)
def test_bad_drawings_get_a_friendly_message(draw_page, canvas, message):
    at = draw_page
    if canvas is not None:
        at.session_state["canvas_0"] = canvas_value(canvas)
    button(at.run(), "Classify").click().run()
    assert not at.exception and not at.error
    assert message in at.warning[0].value


def test_keys_released_by_the_server_are_made_again_and_the_page_says_so(draw_page, seven):
    at = draw_page
    at.session_state["canvas_0"] = canvas_value(drawing(seven))
    button(at.run(), "Classify").click().run()
    cache = he_key_cache()
    first = cache.get(at.session_state[session.HE_KEY_ID])["client"]
    idle, cache.idle_seconds = cache.idle_seconds, 0.0  # as a sweep does once the keys are idle long enough
    cache.sweep()
    cache.idle_seconds = idle
    button(at, "Classify").click().run()
    assert not at.exception and metric(at, "Prediction") == "7"
    assert any("encryption keys were released" in i.value for i in at.info)
    assert cache.get(at.session_state[session.HE_KEY_ID])["client"] is not first


def test_a_canvas_image_claiming_a_huge_size_is_refused(draw_page):
    """The browser sends the canvas as a PNG: a forged one is checked like a file before it is decoded."""
    at = draw_page
    url = "data:image/png;base64," + base64.b64encode(png_claiming(20_000, 20_000)).decode()
    at.session_state["canvas_0"] = {"drawing": {"raw": {"objects": []}, "data": url}, "backgroundFit": None}
    button(at.run(), "Classify").click().run()
    assert not at.exception and not at.error
    assert "20000x20000 image; the canvas makes square ones of 280 to 1120 px" in at.warning[0].value


def test_clear_swaps_in_a_fresh_canvas_and_drops_the_result(draw_page, seven):
    at = draw_page
    at.radio[0].set_value("mpc")
    at.session_state["canvas_0"] = canvas_value(drawing(seven))
    button(at.run(), "Classify").click().run()
    assert session.DRAW_RESULT in at.session_state
    button(at, "Clear").click().run()
    assert session.DRAW_RESULT not in at.session_state
    assert at.session_state[session.CANVAS_VERSION] == 1


def test_encrypted_test_page_runs_a_small_mpc_evaluation():
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    assert at.radio[0].value == "mpc"
    at.number_input[0].set_value(32).run()
    assert any("Estimated time" in c.value for c in at.caption)
    button(at, "Run encrypted evaluation").click().run()
    assert not at.exception and not at.error
    assert metric(at, "Same prediction") == "100.00%"
    assert metric(at, "Plaintext accuracy") == metric(at, "Encrypted accuracy")
    assert "Each compute party sent" in "".join(m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 1  # the confusion matrix
    result = at.session_state[session.ENCRYPTED_EVAL]
    assert result.n == 32 and sum(map(sum, result.confusion)) == 32


def test_encrypted_test_page_estimates_he_time_honestly():
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    at.radio[0].set_value("he")
    at.number_input[0].set_value(10_000).run()
    estimate = next(c.value for c in at.caption if "Estimated time" in c.value)
    assert "8,192 per pass" in estimate and "2 passes" in estimate


def test_encrypted_test_page_refuses_more_images_than_the_server_allows():
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    at.radio[0].set_value("he")
    at.number_input[0].set_value(500).run()
    assert "at most 100 images per request under HE" in at.error[0].value
    assert button(at, "Run encrypted evaluation").disabled


def test_encrypted_test_page_waits_for_a_busy_server_then_says_how_long(monkeypatch):
    monkeypatch.setenv("FEDMNIST_HEAVY_TASK_WAIT_SECONDS", "0.2")
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    at.number_input[0].set_value(10).run()
    gate = heavy_task_gate()
    ticket = gate.acquire(expected_seconds=100)  # another visitor's evaluation
    try:
        button(at, "Run encrypted evaluation").click().run()
    finally:
        gate.release(ticket)
    assert not at.exception and session.ENCRYPTED_EVAL not in at.session_state
    busy = at.warning[0].value
    assert "busy with another visitor's encrypted evaluation" in busy and "about 1 min" in busy
    button(at, "Run encrypted evaluation").click().run()
    assert at.session_state[session.ENCRYPTED_EVAL].n == 10


def test_showcase_puts_disagreements_then_a_few_mistakes_first():
    labels, plain, encrypted = [1, 2, 3, 4, 5], [1, 2, 0, 4, 9], [1, 2, 0, 4, 5]
    assert showcase_indices(labels, plain, encrypted, count=4) == [4, 2, 0, 1]


def test_a_model_too_large_for_mpcs_ring_is_refused_naming_the_layer():
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    model = at.session_state[session.TRAINED_MODEL]["model"]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)  # activations 10x larger at every layer: squares overflow the ring
    at.number_input[0].set_value(8).run()
    button(at, "Run encrypted evaluation").click().run()
    assert not at.exception
    assert "outputs squared can reach" in at.error[0].value and "Something went wrong" not in at.error[0].value


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_encrypted_test_page_shows_each_schemes_results(scheme):
    at = page("pages/3_Encrypted_Test.py").run()
    button(at, "Use the small pretrained model").click().run()
    at.radio[0].set_value(scheme)
    at.number_input[0].set_value(3).run()
    button(at, "Run encrypted evaluation").click().run()
    assert not at.exception and not at.error
    assert metric(at, "Same prediction") == "100.00%"
    assert "**Communication" in "".join(m.value for m in at.markdown)
    assert at.session_state[session.ENCRYPTED_EVAL].scheme == scheme


# Where the pages (and the benchmark) read encrypted results, and the types each variable name holds there.
RESULT_READERS = ["pages/2_Draw.py", "pages/3_Encrypted_Test.py", "bench/bench_encrypted.py"]
RESULT_TYPES = {
    "result": [EvalResult, DigitResult],
    "comm": Communication.__subclasses__(),
    "view": ServerView.__subclasses__(),
}


def result_reads(path: Path) -> list[tuple[str, str]]:
    """(variable, what is read) for every field or key read on a result variable in the file."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in RESULT_TYPES:
            reads.append((node.value.id, node.attr))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in RESULT_TYPES:
            reads.append((node.value.id, f"[{ast.unparse(node.slice)}]"))
    return reads


def test_the_pages_read_only_fields_the_results_have():
    """A renamed field fails here, even in a branch no page test reaches; and no result is read by key."""
    assert {cls.__name__ for cls in RESULT_TYPES["comm"]} == {"MpcCommunication", "HeCommunication"}
    missing = []
    for name in RESULT_READERS:
        reads = result_reads(ROOT / name)
        assert reads, f"{name} reads no result: update RESULT_READERS"
        for variable, read in reads:
            known = {a for cls in RESULT_TYPES[variable] for a in {f.name for f in fields(cls)} | set(dir(cls))}
            if read not in known:
                missing.append(f"{name}: {variable}.{read}")
    assert not missing, missing

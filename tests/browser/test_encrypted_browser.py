"""Draw and Encrypted Test pages in a real browser: mouse strokes on the canvas, encrypted answers."""

import re

import pytest

from devtools.browser import SEVEN, Page, choose, classify, draw

pytestmark = pytest.mark.browser


DOT = [[(0, 0), (2, 2)]]
SCRIBBLE = [[(x, y) for y in range(-60, 61, 12) for x in (-60, 60)]]  # one zigzag filling a square


def test_the_scheme_choice_is_not_covered_by_the_canvas_toolbar(browser, app_url):
    """The canvas's toolbar floats above the canvas; it once covered the MPC choice's label (a click went to it)."""
    page = Page(browser, timeout=120).open(f"{app_url}/Draw")
    page.wait_text("Use the small pretrained model")
    page.click("Use the small pretrained model")
    page.button("Classify")
    draw(page, SEVEN)  # the canvas, and its toolbar, are on the page
    page.wait_text("Preview: what the model will see")
    choose(page, "Multi-party computation")  # raises ElementClickInterceptedException if anything covers the label
    checked = "//label[contains(., 'Multi-party computation')]//input[@type='radio']"
    assert page.driver.find_element("xpath", checked).is_selected()


def test_drawn_seven_is_classified_under_he_and_mpc(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=120).open(f"{app_url}/Draw")
    page.wait_text("Use the small pretrained model")
    page.click("Use the small pretrained model")
    page.button("Classify")
    draw(page, SEVEN)
    page.wait_text("Preview: what the model will see")  # the drawing has reached the server
    text = classify(page, "secret key included")
    assert re.search(r"Prediction\s*7", text), text
    assert "secret key included: False" in text
    page.shot(screenshot_dir, "draw_he")
    page.assert_no_traceback()

    choose(page, "Multi-party computation")
    text = classify(page, "share held by party A")
    assert re.search(r"Prediction\s*7", text)
    page.shot(screenshot_dir, "draw_mpc")
    page.assert_no_traceback()


@pytest.mark.parametrize(
    "strokes, message",
    [
        ([], "The canvas is empty"),
        (DOT, "only a dot"),
        (SCRIBBLE, "looks like a scribble"),
    ],
)
def test_bad_drawings_get_a_friendly_message(browser, app_url, strokes, message):
    page = Page(browser, timeout=120).open(f"{app_url}/Draw")
    page.click("Use the small pretrained model")
    page.button("Classify")
    draw(page, strokes)
    if strokes:
        page.wait_text("Preview: ")  # the drawing has reached the server
    page.click("Classify")
    page.wait.until(lambda d: message in page.alert_text())
    assert "Decrypted on your side" not in page.text()
    page.assert_no_traceback()


def test_encrypted_test_page_runs_a_small_mpc_evaluation(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=180).open(f"{app_url}/Encrypted_Test")
    page.click("Use the small pretrained model")
    choose(page, "Multi-party computation")
    page.set_number("Test images", 500)
    page.click("Run encrypted evaluation")
    page.wait.until(lambda d: "agree" in page.text().lower() and "Confusion" in page.text())
    page.shot(screenshot_dir, "encrypted_test")
    page.assert_no_traceback()

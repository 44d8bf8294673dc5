"""Draw and Encrypted Test pages in a real browser: mouse strokes on the canvas, encrypted answers."""

import itertools
import re

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from devtools.browser import Page, find_canvas

pytestmark = pytest.mark.browser


def draw(page: Page, strokes: list[list[tuple[int, int]]]) -> None:
    """Mouse strokes; each point is an offset in px from the canvas centre."""
    page.wait_idle()  # the canvas is mounted anew by each full rerun
    canvas = find_canvas(page.driver)
    for stroke in strokes:
        actions = ActionChains(page.driver).move_to_element_with_offset(canvas, *stroke[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            steps = max(1, max(abs(x1 - x0), abs(y1 - y0)) // 40)
            for _ in range(steps):
                actions.move_by_offset((x1 - x0) // steps, (y1 - y0) // steps)
        actions.release().perform()


SEVEN = [[(-70, -80), (70, -80), (-20, 100)]]
DOT = [[(0, 0), (2, 2)]]
SCRIBBLE = [[(x, y) for y in range(-60, 61, 12) for x in (-60, 60)]]  # one zigzag filling a square


def choose(page: Page, option_text: str) -> None:
    page.wait.until(
        lambda d: next((el for el in d.find_elements(By.TAG_NAME, "label") if option_text in el.text), False)
    ).click()
    page.wait_idle()


def classify(page: Page, expect: str) -> str:
    """Press Classify and return the page once the result naming ``expect`` is fully shown."""
    page.click("Classify")
    page.wait_text(expect)
    page.wait_idle()
    page.wait.until(lambda d: re.search(r"Prediction\s*\d", page.text()))
    return page.text()


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

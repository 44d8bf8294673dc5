"""app.py is the frame of every page, deep links included, from a fresh server's very first visit on."""

import tempfile

import pytest
from selenium.webdriver.common.by import By

from devtools.browser import Page, new_browser, streamlit_server
from ui.nav import CREDIT, PAGES

pytestmark = pytest.mark.browser


def sidebar_links(page: Page) -> list[str]:
    """The titles in the sidebar's navigation (each link's text starts with its icon's ligature name)."""
    links = page.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a")
    return [link.text.splitlines()[-1] for link in links]


def test_a_deep_link_on_a_fresh_server_runs_through_the_frame(screenshot_dir):
    """Its own server: Streamlit serves a fresh process's first deep link without app.py unless a page insists."""
    with (
        tempfile.NamedTemporaryFile(prefix="streamlit-frame-", suffix=".log", delete=False) as log,
        streamlit_server(log) as (url, _),
    ):
        driver = new_browser()
        try:
            page = Page(driver, timeout=120).open(f"{url}/Draw")
            page.wait_text("Use the small pretrained model")  # the page ran to its end
            page.wait_text(CREDIT)  # the frame's sidebar, drawn by app.py only
            page.wait.until(lambda d: d.title == "Draw · Private ML, live")  # the frame's page config
            assert sidebar_links(page) == [title for _, title, _, _ in PAGES]
            assert driver.current_url == f"{url}/Draw"
            page.shot(screenshot_dir, "frame_draw")
            page.assert_no_traceback()

            page.driver.find_element(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a[href$='/']").click()
            page.wait_text("Private machine learning, live")
            page.wait.until(lambda d: d.title == "Private ML, live: federated MNIST")
            assert driver.current_url.rstrip("/") == url
            page.shot(screenshot_dir, "frame_home")
            page.assert_no_traceback()
        finally:
            driver.quit()

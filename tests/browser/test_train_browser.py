"""Train page in a real browser: a 3x3 run grows its chart round by round; a second run is stopped."""

import re

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devtools.browser import Page, new_browser, xpath_literal
from ui.session import OWNER_COOKIE

pytestmark = pytest.mark.browser


def accuracy_points(page: Page) -> int:
    """Markers on the first trace (test accuracy) of the first plotly chart."""
    return page.driver.execute_script("""
        const plot = document.querySelector('.js-plotly-plot');
        if (!plot) return 0;
        const trace = plot.querySelector('.scatterlayer .trace');
        return trace ? trace.querySelectorAll('.points path').length : 0;""")


def test_landing_page(browser, app_url, screenshot_dir):
    page = Page(browser).open(app_url)
    page.wait_text("Private machine learning, live")
    for link in ("Open Train", "Open Draw", "Open Encrypted Test"):
        page.wait_text(link)
    page.shot(screenshot_dir, "home")
    page.assert_no_traceback()


def test_train_three_workers_three_rounds_then_stop_a_second_run(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=300).open(f"{app_url}/Train")
    page.set_number("Workers", 3)
    page.set_number("Rounds", 3)
    page.click("Start")
    seen = set()

    def finished(driver) -> bool:
        seen.add(accuracy_points(page))
        return "Done:" in page.text()

    WebDriverWait(browser, 600, poll_frequency=0.2).until(finished)
    assert accuracy_points(page) == 3
    assert len(seen - {0}) >= 2, f"the chart should grow round by round, saw point counts {sorted(seen)}"
    accuracy = float(re.search(r"Done: ([\d.]+)% test accuracy", page.text()).group(1))
    assert accuracy > 90
    for label in ("Metrics (CSV)", "Run (JSON)", "Model of round 3 (.pt)"):
        page.button(label)
    page.shot(screenshot_dir, "train")
    page.assert_no_traceback()

    page.set_number("Rounds", 50)
    page.click("Start")
    # The first run's chart can linger in the page for a moment: wait for the new run's own first round.
    WebDriverWait(browser, 600, poll_frequency=0.2).until(lambda d: re.search(r"Round [1-9]\d* of 50", page.text()))
    page.click("Stop")
    page.wait_text("Stopped by you")
    rounds_done = int(re.search(r"Round (\d+) of 50", page.text()).group(1))
    assert 1 <= rounds_done < 50
    page.assert_no_traceback()


def worker_rows(page: Page) -> int:
    return page.driver.execute_script("""
        const grid = document.querySelector('[data-testid="stDataFrame"]');
        return grid ? Number(grid.querySelector('[role="grid"]')?.getAttribute('aria-rowcount') || 0) - 1 : -1;""")


def has_button(page: Page, label: str) -> bool:
    return bool(page.driver.find_elements(By.XPATH, f"//button[normalize-space(.)={xpath_literal(label)}]"))


def test_reload_keeps_ownership_and_another_browser_only_watches(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=300).open(f"{app_url}/Train")
    page.set_number("Rounds", 4)
    page.click("Start")
    WebDriverWait(browser, 120, poll_frequency=0.2).until(lambda d: "run=" in d.current_url)
    WebDriverWait(browser, 60, poll_frequency=0.2).until(lambda d: d.get_cookie(OWNER_COOKIE))
    token = browser.get_cookie(OWNER_COOKIE)["value"]
    assert token not in browser.current_url
    browser.refresh()  # a new Streamlit session: the cookie, not the URL, brings the owner token back
    page.wait_text("of 4")
    page.button("Stop")
    assert "read-only" not in page.text()

    viewer = new_browser()
    try:
        watching = Page(viewer, timeout=300).open(browser.current_url)
        watching.wait_text("read-only")
        WebDriverWait(browser, 600, poll_frequency=0.5).until(lambda d: "Done:" in page.text())
        WebDriverWait(viewer, 60, poll_frequency=0.2).until(lambda d: "Done:" in watching.text())
        assert accuracy_points(watching) == 4  # the same live charts
        assert not has_button(watching, "Stop") and not has_button(watching, "Metrics (CSV)")
        watching.shot(screenshot_dir, "train_read_only")
        watching.assert_no_traceback()
    finally:
        viewer.quit()
    assert "Round 4 of 4" in page.text()
    page.button("Metrics (CSV)")  # the owner, after a reload, still gets the downloads
    page.assert_no_traceback()


def test_settings_over_the_budget_are_refused_with_what_to_lower(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=120).open(f"{app_url}/Train")
    page.set_number("Workers", 100)
    page.set_number("Rounds", 200)
    page.driver.find_element(By.XPATH, "//summary[contains(., 'More settings')]").click()
    page.set_number("Local epochs E", 2)
    page.wait_text("this server allows 10 min per run")
    refusal = page.alert_text()
    assert "this server allows 10 min per run" in refusal and "lower Rounds to" in refusal
    assert "MB per run" not in refusal  # 100 workers of the small CNN train in groups within the memory budget
    assert not page.driver.find_element(By.XPATH, "//button[normalize-space(.)='Start']").is_enabled()
    page.shot(screenshot_dir, "train_over_budget")
    page.assert_no_traceback()


def test_two_sessions_train_at_once_and_keep_their_own_results(app_url):
    first, second = new_browser(), new_browser()
    try:
        pages = [Page(first, timeout=180).open(f"{app_url}/Train"), Page(second, timeout=180).open(f"{app_url}/Train")]
        for page, workers in zip(pages, (3, 4)):
            page.set_number("Workers", workers)
            page.set_number("Rounds", 3)
        for page in pages:
            page.click("Start")
        for page in pages:
            WebDriverWait(page.driver, 600, poll_frequency=0.2).until(lambda d, p=page: "Done:" in p.text())
        assert [worker_rows(p) for p in pages] == [3, 4]
        for page in pages:
            page.assert_no_traceback()
    finally:
        first.quit()
        second.quit()

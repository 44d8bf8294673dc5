"""Train page in a real browser: a 3x3 run grows its chart round by round; a second run is stopped."""

import re

import pytest
from browser_helpers import Page, new_browser
from selenium.webdriver.support.ui import WebDriverWait

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
    page = Page(browser, timeout=120).open(f"{app_url}/Train")
    page.set_number("Workers", 3)
    page.set_number("Rounds", 3)
    page.click("Start")
    seen = set()

    def finished(driver) -> bool:
        seen.add(accuracy_points(page))
        return "Done:" in page.text()

    WebDriverWait(browser, 120, poll_frequency=0.1).until(finished)
    assert accuracy_points(page) == 3
    assert len(seen - {0}) >= 2, f"the chart should grow round by round, saw point counts {sorted(seen)}"
    accuracy = float(re.search(r"Done: ([\d.]+)% test accuracy", page.text()).group(1))
    assert accuracy > 90
    for label in ("Metrics (CSV)", "Run (JSON)", "Trained model (.pt)"):
        page.button(label)
    page.shot(screenshot_dir, "train")
    page.assert_no_traceback()

    page.set_number("Rounds", 50)
    page.click("Start")
    WebDriverWait(browser, 120, poll_frequency=0.2).until(
        lambda d: accuracy_points(page) >= 1 and "of 50" in page.text()
    )
    page.click("Stop")
    page.wait_text("Stopped by you")
    rounds_done = int(re.search(r"Round (\d+) of 50", page.text()).group(1))
    assert 1 <= rounds_done < 50
    page.assert_no_traceback()


def worker_rows(page: Page) -> int:
    return page.driver.execute_script("""
        const grid = document.querySelector('[data-testid="stDataFrame"]');
        return grid ? Number(grid.querySelector('[role="grid"]')?.getAttribute('aria-rowcount') || 0) - 1 : -1;""")


def test_reload_during_a_run_reattaches_to_it(browser, app_url):
    page = Page(browser, timeout=120).open(f"{app_url}/Train")
    page.set_number("Rounds", 6)
    page.click("Start")
    WebDriverWait(browser, 120, poll_frequency=0.2).until(lambda d: "run=" in d.current_url)
    browser.refresh()  # a new browser session: the run id in the URL finds the same run
    page.wait_text("of 6")
    WebDriverWait(browser, 180, poll_frequency=0.2).until(lambda d: "Done:" in page.text())
    assert "Round 6 of 6" in page.text()
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
            WebDriverWait(page.driver, 240, poll_frequency=0.2).until(lambda d, p=page: "Done:" in p.text())
        assert [worker_rows(p) for p in pages] == [3, 4]
        for page in pages:
            page.assert_no_traceback()
    finally:
        first.quit()
        second.quit()

"""Privacy in a real browser: the What leaks page rebuilds a worker's digit and fails behind secure
aggregation; the Train page's Privacy choice runs with both defences and reports epsilon."""

import re

import pytest

from devtools.browser import Page

pytestmark = pytest.mark.browser


def test_the_curious_server_reads_the_update_then_meets_secure_aggregation(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=300).open(f"{app_url}/What_Leaks")
    page.click("Attack this update")
    page.wait_text("read the image back")
    page.wait_idle()  # the images are fetched after the text: shoot once the run is over
    psnr = float(re.search(r"PSNR ([\d.]+) dB or better", page.text()).group(1))
    assert psnr >= 25
    page.shot(screenshot_dir, "leaks")
    page.choose("a masked vector (secure aggregation)")
    page.click("Attack this update")
    page.wait_text("The attack failed")
    page.wait_idle()
    page.shot(screenshot_dir, "leaks_secure")
    page.assert_no_traceback()


def test_a_run_with_both_defences_reports_epsilon(browser, app_url, screenshot_dir):
    page = Page(browser, timeout=600).open(f"{app_url}/Train")
    page.expand("Privacy: secure aggregation and differential privacy")
    page.choose("Both")
    page.wait_text("Example-level DP (DP-SGD)")
    page.set_number("Workers", 3)
    page.set_number("Rounds", 2)
    page.click("Start")
    page.wait_text("Done:", timeout=600)
    page.wait_text("spent so far")  # drawn after the status line: on a loaded machine, a moment later
    epsilon = float(re.search(r"spent so far: ε = ([\d.]+) \(PRV", page.text()).group(1))
    assert 0 < epsilon < 100
    page.wait_text("what each privacy setting cost")
    page.wait_idle()
    page.shot(screenshot_dir, "train_private")
    page.assert_no_traceback()

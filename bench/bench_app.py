"""The app as a visitor meets it: cold start to first paint, and the server's memory during a default run.

    python bench/bench_app.py

Starts `streamlit run app.py` on a free loopback port and drives it with headless Chromium.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "browser"))

from browser_helpers import Page, new_browser, streamlit_server


def tree_rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


class PeakMemory:
    """Samples the server's resident memory (with its children) every 0.1 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, tree_rss_mb(self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    browser = new_browser()  # started first: its own start-up is not the app's cold start
    log = tempfile.NamedTemporaryFile(prefix="streamlit-bench-", suffix=".log", delete=False)  # noqa: SIM115 (the server writes to it until the end)
    try:
        started = time.perf_counter()
        with streamlit_server(log) as (url, process):
            healthy = time.perf_counter() - started
            page = Page(browser, timeout=120)
            browser.get(url)
            page.wait_text("Private machine learning, live")
            first_paint = time.perf_counter() - started
            print(f"cold start: server healthy after {healthy:.1f} s, landing page painted after {first_paint:.1f} s")
            print(f"server memory idle: {tree_rss_mb(process.pid):.0f} MB")
            page.open(f"{url}/Train")
            with PeakMemory(process.pid) as memory:
                run_started = time.perf_counter()
                page.click("Start")
                WebDriverWait(browser, 600, poll_frequency=0.2).until(lambda d: "Done:" in page.text())
                seconds = time.perf_counter() - run_started
            print(f"default run in the browser: {seconds:.1f} s; peak server memory {memory.peak:.0f} MB")
    finally:
        browser.quit()


if __name__ == "__main__":
    main()

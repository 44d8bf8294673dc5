"""Several strangers on one server at once, in real headless Chromium sessions, as a shared link brings them.

    python bench/bench_load.py [--classifications 6] [--nice 10 0]

One visitor trains a default run, one opens that run's link (read-only), two draw a digit and classify it
again and again (one under HE, one under MPC), and one runs small encrypted tests (MPC, then HE). Prints the
errors seen (goal: 0), classification latency p50/p95 under that load (click to result shown), the training
run's time, and the server's wall, CPU (user and sys) and peak memory (the Streamlit process and its children).
The whole scene is played once per training-thread niceness given (FEDMNIST_TRAINING_NICE, fed_core/limits/threads.py;
0 is the old behaviour), in the same run, so the machine's other load hits both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable

from bench_app import MB, PeakMemory, tree_rss
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devtools.browser import SEVEN, Page, choose, draw, new_browser, streamlit_server
from fed_core.limits.threads import NICE_ENV, TRAINING_NICE

RUN_ROUNDS = 5


class Visitors:
    """Runs each visitor in its own thread and browser; collects errors and timings."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors: list[str] = []
        self.latencies: dict[str, list[float]] = {"he": [], "mpc": []}
        self.run_url: str | None = None
        self.run_seconds = float("nan")
        self.run_started = threading.Event()
        self._lock = threading.Lock()

    def error(self, who: str, what: str) -> None:
        with self._lock:
            self.errors.append(f"{who}: {what}")

    def visit(self, who: str, script: Callable[[Page], None]) -> threading.Thread:
        def body() -> None:
            browser = new_browser()
            try:
                page = Page(browser, timeout=600)
                script(page)
                self.check_page(who, page)
            except Exception as exc:
                self.error(who, f"{type(exc).__name__}: {str(exc).strip() or traceback.format_exc(limit=2)}")
            finally:
                browser.quit()

        thread = threading.Thread(target=body, name=who)
        thread.start()
        return thread

    def check_page(self, who: str, page: Page) -> None:
        if page.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']") or "Traceback" in page.text():
            self.error(who, "a traceback on the page")
        if "Something went wrong" in page.text():
            self.error(who, "the page says: Something went wrong")

    # --- what each visitor does --------------------------------------------------------------------------------

    def trainer(self, page: Page) -> None:
        page.open(f"{self.url}/Train")
        page.set_number("Rounds", RUN_ROUNDS)
        started = time.perf_counter()
        page.click("Start")
        WebDriverWait(page.driver, 120, poll_frequency=0.2).until(lambda d: "run=" in d.current_url)
        self.run_url = page.driver.current_url
        self.run_started.set()
        WebDriverWait(page.driver, 1800, poll_frequency=0.2).until(lambda d: "Done:" in page.text())
        self.run_seconds = time.perf_counter() - started

    def viewer(self, page: Page) -> None:
        if not self.run_started.wait(600):
            raise TimeoutException("the trainer's run never started")
        page.open(self.run_url)
        page.wait_text("read-only")
        WebDriverWait(page.driver, 1800, poll_frequency=1).until(lambda d: "Done:" in page.text())
        if page.driver.find_elements(By.XPATH, "//button[normalize-space(.)='Stop']"):
            self.error("viewer", "a Stop button on someone else's run")

    def drawer(self, scheme: str, times: int) -> Callable[[Page], None]:
        def script(page: Page) -> None:
            page.open(f"{self.url}/Draw")
            page.click("Use the small pretrained model")
            page.button("Classify")
            if scheme == "mpc":
                choose(page, "Multi-party computation")
            draw(page, SEVEN)
            page.wait_text("Preview: what the model will see")
            for _ in range(times):
                self.latencies[scheme].append(timed_classify(page))

        return script

    def tester(self, page: Page) -> None:
        page.open(f"{self.url}/Encrypted_Test")
        page.click("Use the small pretrained model")
        for scheme, label, n in (("mpc", "Multi-party computation", 500), ("he", "Homomorphic encryption", 8)):
            choose(page, label)
            page.set_number("Test images", n)
            page.click("Run encrypted evaluation")
            WebDriverWait(page.driver, 900, poll_frequency=0.5).until(
                lambda d, s=scheme: f"{s.upper()} (" in page.text() and "Confusion" in page.text()
            )
            page.wait_idle()


def timed_classify(page: Page) -> float:
    """Press Classify; seconds until the run is over and the prediction is shown."""
    started = time.perf_counter()
    page.click("Classify")
    # The run starts a few ms after the click: wait for it (unless it is already over), so that the previous
    # result is not taken for the new one.
    with contextlib.suppress(TimeoutException):
        WebDriverWait(page.driver, 3, poll_frequency=0.02).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']")
        )
    page.wait_idle()
    page.wait_text("4 · Decrypted on your side")
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def scene(classifications: int, nice: int) -> None:
    """The five visitors on a fresh server whose training thread runs at niceness ``nice``; prints the rows."""
    tag = f"[{NICE_ENV}={nice}]"
    os.environ[NICE_ENV] = str(nice)  # the server inherits this process's environment
    log = tempfile.NamedTemporaryFile(prefix="streamlit-load-", suffix=".log", delete=False)  # noqa: SIM115 (the server writes to it until the end)
    with streamlit_server(log) as (url, process):
        print(f"{tag} server memory idle: {tree_rss(process.pid) / MB:.0f} MB (log: {log.name})")
        visitors = Visitors(url)
        with PeakMemory(process.pid) as memory:
            threads = [
                visitors.visit("trainer", visitors.trainer),
                visitors.visit("viewer", visitors.viewer),
                visitors.visit("HE drawer", visitors.drawer("he", classifications)),
                visitors.visit("MPC drawer", visitors.drawer("mpc", classifications)),
                visitors.visit("tester", visitors.tester),
            ]
            for thread in threads:
                thread.join()
        print(f"{tag} 5 visitors, server: {memory.usage}; the training run took {visitors.run_seconds:.1f} s")
    print(f"{tag} errors: {len(visitors.errors)}")
    for error in visitors.errors:
        print(f"  {error}")
    for scheme, latencies in visitors.latencies.items():
        if latencies:
            p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
            print(
                f"{tag} {scheme.upper()} classification under load ({len(latencies)}): "
                f"p50 {p50:.2f} s, p95 {p95:.2f} s (goal: p95 1.5 s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifications", type=int, default=6, help="classifications per drawing visitor")
    parser.add_argument(
        "--nice", type=int, nargs="+", default=[TRAINING_NICE, 0], help="training-thread niceness per scene"
    )
    args = parser.parse_args()
    for nice in args.nice:
        scene(args.classifications, nice)


if __name__ == "__main__":
    main()

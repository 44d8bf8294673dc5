"""Several strangers on one server at once, in real headless Chromium sessions, as a shared link brings them.

    python bench/bench_load.py [--classifications 6] [--nice 10 0] [--browser-nice 0 19] [--trace]

One visitor trains a default run, one opens that run's link (read-only), two draw a digit and classify it
again and again (one under HE, one under MPC), and one runs small encrypted tests (MPC, then HE). Prints the
errors seen (goal: 0), classification latency p50/p95 under that load (click to result shown: as the browser
saw it, and as the harness noticed it through chromedriver), the training run's time, the server's wall, CPU
(user and sys) and peak memory (the Streamlit process and its children), and who used the machine's cores: the
server, each visitor's browser, everything else (other sessions on the machine). The whole scene is played once
per training-thread niceness given (FEDMNIST_TRAINING_NICE, fed_core/limits/threads.py), in the same run, so the
machine's other load hits each. ``--trace`` also prints where a classification's time went, stage by stage
(bench/load_trace.py, from a probe loaded into the server: bench/probe/sitecustomize.py). ``--browser-nice``
plays the scene again with the visitors' browsers at that niceness: here they share the server's two cores, where
real visitors' browsers run on their own machines; at 19 they take only what the server leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil
from bench_app import MB, PeakMemory, tree_rss
from load_trace import PROBE_DIR, print_breakdown
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devtools.browser import SEVEN, Page, choose, draw, new_browser, streamlit_server
from fed_core.limits.threads import NICE_ENV, TRAINING_NICE

RUN_ROUNDS = 5


def lower_priority(pid: int, nice: int) -> None:
    """Renice a browser's process tree: chromedriver, Chromium and its zygote, whose later children inherit it."""
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            process.nice(nice)


class Visitors:
    """Runs each visitor in its own thread and browser; collects errors and timings."""

    def __init__(self, url: str, browser_nice: int = 0) -> None:
        self.url = url
        self.browser_nice = browser_nice
        self.errors: list[str] = []
        self.latencies: dict[str, list[float]] = {"he": [], "mpc": []}
        self.clicks: dict[str, list[dict]] = {"he": [], "mpc": []}  # per scheme (timed_classify)
        self.run_url: str | None = None
        self.run_seconds = float("nan")
        self.run_started = threading.Event()
        self.drivers: dict[str, int] = {}  # visitor: its chromedriver's pid (its browser runs under it)
        self._lock = threading.Lock()

    def error(self, who: str, what: str) -> None:
        with self._lock:
            self.errors.append(f"{who}: {what}")

    def visit(self, who: str, script: Callable[[Page], None]) -> threading.Thread:
        def body() -> None:
            browser = new_browser()
            self.drivers[who] = browser.service.process.pid
            if self.browser_nice:
                lower_priority(browser.service.process.pid, self.browser_nice)
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
            draw(page, SEVEN)
            page.wait_text("Preview: what the model will see")
            if scheme == "mpc":  # once the page has settled: a choice clicked while the canvas mounts can miss
                choose(page, "Multi-party computation")
            for _ in range(times):
                self.latencies[scheme].append(timed_classify(page, self.clicks[scheme]))

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


# Installed in the page just before Classify is pressed, wall-clock ms as the browser saw them (comparable with the
# server's trace on the same machine): the click event on the button; the page turning busy (Streamlit's status
# widget, or the previous result greyed out as stale); and the new result shown, nothing stale or running left.
# What a visitor waits is click to idle; the harness notices later, through chromedriver's polling.
WATCH_STATUS = """
    const marks = window.__latency = {};
    document.addEventListener('click', (event) => {
        const button = event.target.closest('button');
        if (!marks.click && button && button.innerText.trim() === 'Classify') marks.click = Date.now();
    }, {capture: true});
    const busy = () => document.querySelector('[data-testid="stStatusWidget"], [data-stale="true"]') !== null;
    const shown = () => [...document.querySelectorAll('[data-testid="stHeading"]')]
        .some((heading) => heading.textContent.includes('4 · Decrypted'));
    new MutationObserver((_, observer) => {
        if (!marks.click) return;
        if (!marks.busy && busy()) marks.busy = Date.now();
        if (marks.busy && !busy() && shown()) { marks.idle = Date.now(); observer.disconnect(); }
    }).observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ['data-stale']});"""


def timed_classify(page: Page, clicks: list[dict]) -> float:
    """Press Classify; seconds until the run is over and the prediction is shown, as the harness sees it. Appends
    the click's wall-clock times to ``clicks``: pressed and seen by the harness, and the browser's own marks."""
    page.driver.execute_script(WATCH_STATUS)
    pressed = time.time()
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
    seconds = time.perf_counter() - started
    marks = page.driver.execute_script("return window.__latency || {}")
    clicks.append({"pressed": pressed, "seen": pressed + seconds, **{k: v / 1e3 for k, v in marks.items()}})
    return seconds


class CpuShares:
    """CPU seconds over a block: the whole machine's (from /proc/stat, every process of every session on it) and
    each visitor's browser (its chromedriver's process tree, sampled every second so that a browser that quits
    is still counted up to its last sample)."""

    def __init__(self, drivers: dict[str, int]) -> None:
        self._drivers, self._seen = drivers, {}  # {pid: (visitor, CPU seconds)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            for who, pid in list(self._drivers.items()):
                with contextlib.suppress(psutil.Error):
                    driver = psutil.Process(pid)
                    for process in [driver, *driver.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            times = process.cpu_times()
                            self._seen[process.pid] = (who, times.user + times.system)

    @staticmethod
    def machine_busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def __enter__(self) -> CpuShares:
        self._started, self._busy = time.perf_counter(), self.machine_busy()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._started
        self.machine = self.machine_busy() - self._busy

    def text(self, server_cpu: float) -> str:
        per_visitor: dict[str, float] = {}
        for who, seconds in self._seen.values():
            per_visitor[who] = per_visitor.get(who, 0.0) + seconds
        browsers = sum(per_visitor.values())
        cores, other = os.cpu_count(), self.machine - server_cpu - browsers
        each = ", ".join(f"{who} {seconds / self.wall:.2f}" for who, seconds in per_visitor.items())
        return (
            f"CPU over {self.wall:.0f} s on {cores} cores: machine {self.machine / self.wall:.2f} cores busy "
            f"(load average {os.getloadavg()[0]:.1f}); server {server_cpu / self.wall:.2f}, the browsers "
            f"{browsers / self.wall:.2f} ({each}), everything else {other / self.wall:.2f}"
        )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def scene(classifications: int, setting: dict[str, str], trace: bool = False, browser_nice: int = 0) -> None:
    """The five visitors on a fresh server started with the environment ``setting``; prints the rows."""
    tag = "[" + " ".join([*(f"{k}={v}" for k, v in setting.items()), f"browsers at nice {browser_nice}"]) + "]"
    os.environ.update(setting)  # the server inherits this process's environment
    log = tempfile.NamedTemporaryFile(prefix="streamlit-load-", suffix=".log", delete=False)  # noqa: SIM115 (the server writes to it until the end)
    trace_path = tempfile.mktemp(prefix="streamlit-trace-", suffix=".jsonl") if trace else None
    with traced_server(trace_path), streamlit_server(log) as (url, process):
        print(f"{tag} server memory idle: {tree_rss(process.pid) / MB:.0f} MB (log: {log.name})")
        visitors = Visitors(url, browser_nice)
        with CpuShares(visitors.drivers) as cpu, PeakMemory(process.pid) as memory:
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
        print(f"{tag} {cpu.text(memory.usage.user + memory.usage.sys)}")
    print(f"{tag} errors: {len(visitors.errors)}")
    for error in visitors.errors:
        print(f"  {error}")
    for scheme, latencies in visitors.latencies.items():
        if latencies:
            # In the browser: its click event to the result shown (a click without both marks counts as the
            # harness saw it). The harness's own figure adds chromedriver's polling of a busy browser.
            seen = [c.get("idle", c["seen"]) - c.get("click", c["pressed"]) for c in visitors.clicks[scheme]]
            print(
                f"{tag} {scheme.upper()} classification under load ({len(latencies)}): in the browser p50 "
                f"{percentile(seen, 50):.2f} s, p95 {percentile(seen, 95):.2f} s (goal: p95 1.5 s); as the harness "
                f"notices it p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s"
            )
    if trace_path:
        Path(trace_path + ".clicks.json").write_text(json.dumps(visitors.clicks))  # beside the trace, to re-read
        print_breakdown(tag, visitors.clicks, trace_path)


@contextlib.contextmanager
def traced_server(path: str | None):
    """With a path, the server started inside writes its trace there (bench/probe/sitecustomize.py)."""
    if path is None:
        yield
        return
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE_DIR), saved]))
    os.environ["FEDMNIST_TRACE"] = path
    try:
        yield
    finally:
        os.environ.pop("FEDMNIST_TRACE")
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifications", type=int, default=6, help="classifications per drawing visitor")
    parser.add_argument("--nice", type=int, nargs="+", default=[TRAINING_NICE], help="training niceness per scene")
    parser.add_argument("--browser-nice", type=int, nargs="+", default=[0], help="the browsers' niceness per scene")
    parser.add_argument("--trace", action="store_true", help="also print where a classification's time goes")
    args = parser.parse_args()
    for nice in args.nice:
        for browser_nice in args.browser_nice:
            scene(args.classifications, {NICE_ENV: str(nice)}, args.trace, browser_nice)


if __name__ == "__main__":
    main()

"""The app as a visitor meets it: cold start, the server's memory, and the memory estimator against real runs.

    python bench/bench_app.py              # cold start; peak server memory: a default run, then a Draw (HE)
                                           # classification; then the worst case the default budget allows
    python bench/bench_app.py worst [glibc] # only that worst case (with another allocator setting)
    python bench/bench_app.py estimator    # limits.estimates.estimate_run_bytes vs the measured peak RSS of real runs

Starts `streamlit run app.py` on a free loopback port and drives it with headless Chromium. Every row prints the
server's wall, CPU (user and sys) and peak memory together; the default run is measured with the chosen allocator
setting and with glibc's defaults in the same run (fed_core/limits/memory.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psutil
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from usage import Usage, run_measured

from devtools.browser import SEVEN, Page, choose, classify, draw, new_browser, streamlit_server
from fed_core.config import TrainConfig
from fed_core.limits.budget import Budget
from fed_core.limits.estimates import estimate_run_bytes
from fed_core.limits.memory import CHOSEN, ENV, allocator_setting

MB = 1e6


def tree_rss(pid: int) -> float:
    """Resident bytes of a process and its children."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, sys) of a process and its children, living and reaped."""
    process = psutil.Process(pid)
    times = [p.cpu_times() for p in [process, *process.children(recursive=True)]]
    return (
        sum(t.user + t.children_user for t in times),
        sum(t.system + t.children_system for t in times),
    )


class PeakMemory:
    """Samples a process tree's resident memory every 50 ms in a thread; ``peak`` in bytes, and ``usage``: the
    block's wall time, the tree's CPU time (user and sys) and that peak, together (bench/usage.py)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.usage = Usage()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __enter__(self) -> PeakMemory:
        self._started, self._cpu = time.perf_counter(), tree_cpu(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        user, sys_ = tree_cpu(self.pid)
        self.usage = Usage(time.perf_counter() - self._started, user - self._cpu[0], sys_ - self._cpu[1], self.peak)


# --- in the browser -------------------------------------------------------------------------------------------


def worst_allowed(budget: Budget) -> TrainConfig:
    """The crypto-CNN run (every worker sampled) with the largest memory estimate the budget accepts."""
    candidates = [
        TrainConfig(workers=workers, batch_size=batch, rounds=2)
        for workers in (5, 10, 20, 50, 80, 100)
        for batch in (32, 64, 128, 256, 512, 1024)
    ]
    allowed = [c for c in candidates if estimate_run_bytes(c) <= budget.training_memory_bytes]
    return max(allowed, key=estimate_run_bytes)


def train_in_browser(page: Page, url: str, workers: int, rounds: int) -> float:
    page.open(f"{url}/Train")
    page.set_number("Workers", workers)
    page.set_number("Rounds", rounds)
    started = time.perf_counter()
    page.click("Start")
    WebDriverWait(page.driver, 900, poll_frequency=0.2).until(lambda d: "Done:" in page.text())
    return time.perf_counter() - started


def classify_drawn_digit(page: Page, url: str) -> None:
    set_up_drawing(page, url)
    classify(page, "secret key included")


def browser_main() -> None:
    """Cold start and a default run with a Draw (HE) after it, on a server with the chosen allocator setting and
    on one with glibc's defaults, one after the other; then the worst case, with the chosen setting only."""
    browser = new_browser()  # started first: its own start-up is not the app's cold start
    try:
        for setting in (CHOSEN, "glibc"):
            with server_with(setting) as (url, process):
                default_run_then_draw(browser, url, process, setting)
                if setting == CHOSEN:
                    worst_case(url, process.pid)
    finally:
        browser.quit()


@contextmanager
def server_with(setting: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run app.py` with the allocator ``setting`` (fed_core.limits.memory); prints its cold start."""
    log = tempfile.NamedTemporaryFile(prefix="streamlit-bench-", suffix=".log", delete=False)  # noqa: SIM115 (the server writes to it until the end)
    os.environ[ENV] = setting  # the server inherits this process's environment
    started = time.perf_counter()
    with streamlit_server(log) as (url, process):
        print(f"[{ENV}={setting}] server healthy after {time.perf_counter() - started:.1f} s")
        yield url, process


def default_run_then_draw(browser, url: str, process: subprocess.Popen, setting: str) -> None:
    page = Page(browser, timeout=300)
    started = time.perf_counter()
    browser.get(url)
    page.wait_text("Private machine learning, live")
    print(
        f"[{ENV}={setting}] landing page painted {time.perf_counter() - started:.1f} s after the request; "
        f"server memory idle: {tree_rss(process.pid) / MB:.0f} MB"
    )
    with PeakMemory(process.pid) as memory:
        seconds = train_in_browser(page, url, TrainConfig().workers, TrainConfig().rounds)
        after_run = memory.peak
        classify_drawn_digit(page, url)
    print(
        f"[{ENV}={setting}] default run in the browser: {seconds:.1f} s; peak server memory {after_run / MB:.0f} MB "
        f"during the run, {memory.peak / MB:.0f} MB with the Draw (HE) classification after it (goal: 1,000 MB) | "
        f"server, run and Draw: {memory.usage}"
    )


def worst_case(url: str, pid: int) -> None:
    """Two visitors start the biggest run the default budget allows; meanwhile as many visitors as may hold HE
    keys classify a drawn digit, and one runs the largest HE evaluation allowed on the Encrypted Test page.

    Every page is opened and set up first: a server busy with two runs is slow to serve new pages.
    """
    budget = Budget()
    config = worst_allowed(budget)
    print(
        f"worst allowed run: {config.model}, {config.workers} workers, C={config.fraction}, B={config.batch_size} "
        f"(estimate {estimate_run_bytes(config) / MB:.0f} MB)"
    )
    browsers = [new_browser() for _ in range(3 + budget.he_key_sets)]
    try:
        pages = [Page(b, timeout=1800) for b in browsers]
        trainers, tester, drawers = pages[:2], pages[2], pages[3:]
        for page in trainers:
            set_up_run(page, url, config)
        set_up_he_evaluation(tester, url, budget.he_images_per_request)
        for page in drawers:
            set_up_drawing(page, url)
        with PeakMemory(pid) as memory:
            for page in (*trainers, tester):
                page.click("Start" if page in trainers else "Run encrypted evaluation")
            for page in drawers:
                classify(page, "secret key included")
            for page in trainers:
                WebDriverWait(page.driver, 3600, poll_frequency=1).until(lambda d, p=page: "Done:" in p.text())
            WebDriverWait(tester.driver, 3600, poll_frequency=1).until(lambda d: "HE (" in tester.text())
        print(
            f"[{ENV}={allocator_setting()}] two worst allowed runs, an HE evaluation of "
            f"{budget.he_images_per_request:,} test images and {budget.he_key_sets} Draw (HE) classifications at "
            f"once: peak server memory {memory.peak / MB:.0f} MB (goal: 1,700 MB) | server: {memory.usage}"
        )
    finally:
        for b in browsers:
            b.quit()


def set_up_he_evaluation(page: Page, url: str, images: int) -> None:
    page.open(f"{url}/Encrypted_Test")
    page.click("Use the small pretrained model")
    choose(page, "Homomorphic encryption")
    page.set_number("Test images", images)


def set_up_run(page: Page, url: str, config: TrainConfig) -> None:
    page.open(f"{url}/Train")
    page.set_number("Workers", config.workers)
    page.set_number("Rounds", config.rounds)
    page.driver.find_element(By.XPATH, "//summary[contains(., 'More settings')]").click()
    page.set_number("Batch size B", config.batch_size)


def set_up_drawing(page: Page, url: str) -> None:
    page.open(f"{url}/Draw")
    page.click("Use the small pretrained model")
    page.button("Classify")
    draw(page, SEVEN)
    page.wait_text("Preview: what the model will see")


# --- the estimator against real runs ----------------------------------------------------------------------------

ESTIMATOR_SETTINGS = [
    TrainConfig(),
    TrainConfig(workers=100),
    TrainConfig(workers=20, batch_size=1024),
    TrainConfig(workers=50, batch_size=512, contribution_subset=0),
    TrainConfig(model="relu_cnn", fraction=0.4),
    TrainConfig(model="fedavg_cnn", fraction=0.2, batch_size=64),
]

MEASURE_ONE = """
import json, resource, sys, threading, time, psutil, torch
torch.set_num_threads(1)
from fed_core.config import TrainConfig
from fed_core.limits.memory import CHOSEN, ENV, allocator_setting
from fed_core.data.mnist import load_mnist
from fed_core.engines import engine_for
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
data = load_mnist()
process, peak, done = psutil.Process(), [0], threading.Event()
cold = process.memory_info().rss
# The first run of a process maps torch's kernels in: paid once per server, not per run. Warm up, then measure.
engine_for(TrainConfig(workers=2, rounds=1, train_size=2000, model=config.model, contribution_subset=10)).run(data)
warm = process.memory_info().rss
engine = engine_for(config)
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], process.memory_info().rss)
before = process.memory_info().rss
thread = threading.Thread(target=sample); thread.start()
engine.run(data)
done.set(); thread.join()
print(json.dumps({"before": before, "peak": peak[0], "warm_up": warm - cold}))
"""


def estimator_main() -> None:
    print("settings | estimate | measured peak RSS growth | measured / estimate | one-time warm-up of the process")
    for config in ESTIMATOR_SETTINGS:
        config = replace(config, rounds=1)
        usage, out = run_measured(["-c", MEASURE_ONE, json.dumps(config.to_dict())], {"OMP_NUM_THREADS": "1"})
        figures = json.loads(out.strip().splitlines()[-1])
        measured, estimate = figures["peak"] - figures["before"], estimate_run_bytes(config)
        label = (
            f"{config.model}, {config.workers} workers, C={config.fraction}, B={config.batch_size}, "
            f"contribution subset {config.contribution_subset}"
        )
        print(
            f"{label} | {estimate / MB:.0f} MB | {measured / MB:.0f} MB | {measured / estimate:.2f} | "
            f"{figures['warm_up'] / MB:.0f} MB | the whole process: {usage}"
        )


def worst_main() -> None:
    with server_with(sys.argv[2] if sys.argv[2:] else CHOSEN) as (url, process):
        worst_case(url, process.pid)


if __name__ == "__main__":
    modes = {"estimator": estimator_main, "worst": worst_main}
    modes.get(sys.argv[1] if sys.argv[1:] else "", browser_main)()

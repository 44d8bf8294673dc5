"""Starting `streamlit run app.py` and acting on its pages in headless Chromium the way a user does."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]  # the repository: `streamlit run app.py` runs there
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--window-size=1400,1800",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)  # polling the health endpoint, not waiting for the app
    raise TimeoutError("streamlit did not become healthy")


def new_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


@contextmanager
def streamlit_server(log: IO) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run app.py` on a free loopback port; yields (url, process) once healthy, stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


class Page:
    """Small helpers to act on a Streamlit page the way a user does."""

    def __init__(self, driver: webdriver.Chrome, timeout: float = 60) -> None:
        self.driver = driver
        self.wait = WebDriverWait(driver, timeout, poll_frequency=0.2)

    def open(self, url: str) -> Page:
        self.driver.get(url)
        self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stApp']")))
        self.wait_idle()
        return self

    def wait_idle(self) -> None:
        """Until Streamlit reports the script run finished (no 'running' status widget)."""
        self.wait.until(
            lambda d: d.execute_script("return document.querySelector('[data-testid=\"stStatusWidget\"]') === null")
        )

    def wait_text(self, text: str, timeout: float | None = None) -> WebElement:
        wait = WebDriverWait(self.driver, timeout or self.wait._timeout, poll_frequency=0.2)
        contains = f"contains(normalize-space(.), {xpath_literal(text)})"
        # The innermost element holding the text, so the caller gets the element the text is in.
        return wait.until(EC.presence_of_element_located((By.XPATH, f"//*[{contains} and not(*[{contains}])]")))

    def button(self, label: str) -> WebElement:
        return self.wait.until(
            EC.element_to_be_clickable((By.XPATH, f"//button[normalize-space(.)={xpath_literal(label)}]"))
        )

    def click(self, label: str) -> None:
        # A rerun can redraw the button between finding and clicking it: find it again then.
        self.wait.until(lambda d: self._clicked(label))

    def _clicked(self, label: str) -> bool:
        try:
            self.button(label).click()
        except StaleElementReferenceException:
            return False
        return True

    def set_number(self, label: str, value: float) -> None:
        field = self.wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, f"input[aria-label={css_string(label)}]"))
        )
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.ENTER)
        self.wait.until(lambda d: field.get_attribute("value") == str(value))
        self.wait_idle()

    def choose(self, option: str) -> None:
        """Click the radio option labelled ``option``."""
        label = f"//div[@data-testid='stRadio']//label[normalize-space(.)={xpath_literal(option)}]"
        self.wait.until(EC.element_to_be_clickable((By.XPATH, label))).click()
        self.wait_idle()

    def expand(self, title: str) -> None:
        """Open the expander whose header says ``title``."""
        header = f"//details/summary[contains(normalize-space(.), {xpath_literal(title)})]"
        self.wait.until(EC.element_to_be_clickable((By.XPATH, header))).click()

    def alert_text(self) -> str:
        return " ".join(a.text for a in self.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stAlert']"))

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        height = self.driver.execute_script("return document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        self.driver.set_window_size(1400, max(900, min(int(height) + 100, 4000)))
        self.driver.save_screenshot(str(path))
        return path

    def assert_no_traceback(self) -> None:
        assert not self.driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
        assert "Traceback" not in self.text()


def xpath_literal(text: str) -> str:
    return f'"{text}"' if '"' not in text else f"'{text}'"


def css_string(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def find_canvas(driver: webdriver.Chrome) -> WebElement:
    """The drawing canvas: streamlit-drawable-canvas renders it inside a shadow root."""
    script = """
        const wide = (root) => [...root.querySelectorAll('canvas')].filter(c => c.clientWidth >= 200);
        for (const host of document.querySelectorAll('*')) {
            if (host.shadowRoot && wide(host.shadowRoot).length) return wide(host.shadowRoot).pop();
        }
        return wide(document).pop() || null;"""
    return WebDriverWait(driver, 60, poll_frequency=0.5).until(lambda d: d.execute_script(script))


# --- drawing on the Draw page (the browser tests and bench/bench_app.py, bench/bench_load.py) ---

SEVEN = [[(-70, -80), (70, -80), (-20, 100)]]


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

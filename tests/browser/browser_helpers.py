"""Acting on a Streamlit page in Chromium the way a user does."""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


class Page:
    """Small helpers to act on a Streamlit page the way a user does."""

    def __init__(self, driver: webdriver.Chrome, timeout: float = 60) -> None:
        self.driver = driver
        self.wait = WebDriverWait(driver, timeout, poll_frequency=0.2)

    def open(self, url: str) -> "Page":
        self.driver.get(url)
        self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stApp']")))
        self.wait_idle()
        return self

    def wait_idle(self) -> None:
        """Until Streamlit reports the script run finished (no 'running' status widget)."""
        self.wait.until(lambda d: d.execute_script(
            "return document.querySelector('[data-testid=\"stStatusWidget\"]') === null"))

    def wait_text(self, text: str, timeout: float | None = None) -> WebElement:
        wait = WebDriverWait(self.driver, timeout or self.wait._timeout, poll_frequency=0.2)
        return wait.until(EC.presence_of_element_located(
            (By.XPATH, f"//*[contains(normalize-space(.), {xpath_literal(text)}) and not(*[contains(normalize-space(.), {xpath_literal(text)})])]")))

    def button(self, label: str) -> WebElement:
        return self.wait.until(EC.element_to_be_clickable(
            (By.XPATH, f"//button[normalize-space(.)={xpath_literal(label)}]")))

    def click(self, label: str) -> None:
        self.button(label).click()

    def set_number(self, label: str, value: float) -> None:
        field = self.wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, f"input[aria-label={css_string(label)}]")))
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.ENTER)
        self.wait.until(lambda d: field.get_attribute("value") == str(value))
        self.wait_idle()

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

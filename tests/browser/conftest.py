"""A real `streamlit run app.py` on a free loopback port, driven by headless Debian Chromium."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from devtools.browser import new_browser, streamlit_server


@pytest.fixture(scope="session")
def app_url():
    log = tempfile.NamedTemporaryFile(prefix="streamlit-", suffix=".log", delete=False)  # noqa: SIM115 (the server writes to it until the end)
    with streamlit_server(log) as (url, _):
        yield url
    print(f"\nstreamlit server log: {log.name}")


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "fedmnist-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def browser():
    driver = new_browser()
    yield driver
    driver.quit()

"""app.py is the frame of every page: its page config, sidebar and navigation wrap each page, deep links stay."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.nav import CREDIT, PAGES

ROOT = Path(__file__).resolve().parent.parent


def test_the_deep_links_of_the_pages_stay():
    """The URL paths the README, the browser tests and visitors' bookmarks use."""
    assert {url for _, _, _, url in PAGES} == {"", "Train", "Draw", "Encrypted_Test", "What_Leaks"}
    assert all((ROOT / path).exists() for path, _, _, _ in PAGES)


@pytest.mark.parametrize("path", [path for path, _, _, _ in PAGES])
def test_every_page_runs_inside_the_frame(path):
    """AppTest starts each run the way a fresh server serves a deep link: the page still gets the frame."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page(path).run()
    assert not at.exception
    assert [c.value for c in at.sidebar.caption] == [CREDIT]  # drawn by app.py only
    assert len(at.title) == 1  # the page ran once, inside the frame

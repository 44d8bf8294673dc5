"""The app's pages, declared once (file, title, icon, URL path: the deep links /Train, /Draw, ... stay), and what
app.py's frame needs around them."""

from __future__ import annotations

import logging
import runpy
from functools import cache
from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage
from streamlit.runtime.pages_manager import PagesManager

from fed_core.limits.memory import release_freed_memory

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "app.py"
APP_NAME = "Private ML, live"
CREDIT = "Private ML, live · MNIST: LeCun & Cortes, CC BY-SA 3.0"

# (script under the repository root, title in the sidebar and the browser tab, icon, URL path); Home is "/".
PAGES = (
    ("pages/0_Home.py", "Home", ":material/home:", ""),
    ("pages/1_Train.py", "Train", ":material/model_training:", "Train"),
    ("pages/2_Draw.py", "Draw", ":material/draw:", "Draw"),
    ("pages/3_Encrypted_Test.py", "Encrypted Test", ":material/lock:", "Encrypted_Test"),
    ("pages/4_What_Leaks.py", "What leaks", ":material/visibility:", "What_Leaks"),
)


@cache
def configure_process() -> None:
    """Once per server process, whichever page a visitor opens first."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    release_freed_memory()  # a shared server must not keep every visitor's peak memory


def pages() -> list[StreamlitPage]:
    """Every page this deployment has, Home first and default (a trimmed-down deployment may leave one out)."""
    return [
        st.Page(path, title=title, icon=icon, url_path=url_path or None, default=not url_path)
        for path, title, icon, url_path in PAGES
        if (ROOT / path).exists()
    ]


def tab_title(page: StreamlitPage) -> str:
    """The browser tab's title: the page, then the app (Home says what the app is)."""
    return f"{APP_NAME}: federated MNIST" if page.url_path == "" else f"{page.title} · {APP_NAME}"


def in_frame() -> None:
    """Make sure the page runs inside app.py's frame: the first statement of every page script.

    Streamlit decides per server process, from the mere presence of a ``pages/`` folder beside app.py, to serve
    a deep link (/Draw) the legacy way, running the page script alone, until some run calls ``st.navigation``
    (its maintainers describe this in streamlit/streamlit#10276). The first visitor of a fresh server arriving on
    /Draw would get the page without its config, logging, memory setting and sidebar, and so would everyone
    after them until someone opened Home; AppTest starts every run that way. Such a run switches the process to
    ``st.navigation`` and runs the frame here, which runs this page inside it (the same page: its identity is
    its URL path, the same both ways), then stops the outer run. No rerun: a button pressed in it still counts.
    Inside the frame this is one attribute read.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(ENTRYPOINT), run_name="__main__")
        st.stop()

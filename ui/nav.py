"""The app's pages, declared once: file, title, icon and URL path (the deep links /Train, /Draw, ... stay)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage
from streamlit.runtime.pages_manager import PagesManager

ROOT = Path(__file__).resolve().parent.parent
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
    """Make sure the page runs inside app.py's frame: the first line of every page script.

    Streamlit decides once per server process, from the mere presence of a ``pages/`` folder beside app.py, to
    serve a deep link (/Draw) the legacy way, running the page script alone, until some run calls
    ``st.navigation`` (the maintainers describe it in streamlit/streamlit#10276). The first visitor of a fresh
    server arriving on /Draw would get the page without its config, logging, memory setting and sidebar, and so
    would every visitor after them until someone opened Home. Such a run switches the process to
    ``st.navigation`` here and reruns: the rerun goes through app.py to the same page (a page's identity is its
    URL path, the same both ways). Inside the frame this is one attribute read.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()

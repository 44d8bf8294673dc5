"""The app's frame: process settings, logging and page config once, then the page the visitor asked for.

Run with ``streamlit run app.py``. The pages are the scripts in ``pages/``, listed in ``ui/nav.py``; Streamlit
runs this file on every rerun of every page, so what must happen once per server process sits behind
``st.cache_resource``.
"""

import logging

import streamlit as st

from fed_core.memory import release_freed_memory
from ui.nav import CREDIT, pages, tab_title


@st.cache_resource
def configure_process() -> None:
    """Once per server process, whichever page a visitor opens first."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    release_freed_memory()  # a shared server must not keep every visitor's peak memory


configure_process()
page = st.navigation(pages())
st.set_page_config(page_title=tab_title(page), page_icon=page.icon, layout="wide")
with st.sidebar:
    st.caption(CREDIT)
page.run()

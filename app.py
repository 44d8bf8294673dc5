"""The app's frame: process settings, logging and page config once, then the page the visitor asked for.

Run with ``streamlit run app.py``. The pages are the scripts in ``pages/``, declared in ``ui/nav.py``; Streamlit
runs this file first on every rerun of every page.
"""

import streamlit as st

from ui.nav import CREDIT, configure_process, pages, tab_title


def frame() -> None:
    configure_process()
    page = st.navigation(pages())
    st.set_page_config(page_title=tab_title(page), page_icon=page.icon, layout="wide")
    with st.sidebar:
        st.caption(CREDIT)
    page.run()


# Streamlit runs this file as __main__. A child process started with multiprocessing's spawn (the MPC parties, the
# HE batch's server processes) re-imports the parent's __main__ under another name: it must not draw the app.
if __name__ == "__main__":
    frame()

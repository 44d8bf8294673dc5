"""The sidebar every page shows (Streamlit's own list would call the landing page "app")."""

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent

PAGES = (
    ("app.py", "Home", ":material/home:"),
    ("pages/1_Train.py", "Train", ":material/model_training:"),
    ("pages/2_Draw.py", "Draw", ":material/draw:"),
    ("pages/3_Encrypted_Test.py", "Encrypted Test", ":material/lock:"),
    ("pages/4_What_Leaks.py", "What leaks", ":material/visibility:"),
)


def sidebar_nav() -> None:
    with st.sidebar:
        for path, label, icon in PAGES:
            if (ROOT / path).exists():  # a trimmed-down deployment may leave a page out
                st.page_link(path, label=label, icon=icon)
        st.caption("Private ML, live · MNIST: LeCun & Cortes, CC BY-SA 3.0")

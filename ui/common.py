"""What every page shares: colours, chart settings, formatting, progress, and never showing a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from fed_core.limits.budget import load_budget
from fed_core.limits.gates import Gate
from fed_core.limits.memory import give_back
from fed_core.vocabulary import UserError

log = logging.getLogger(__name__)

ACCENT, SECOND = "#4C6EF5", "#F59F00"
# Plotly's hover toolbar covers the titles on a projector; zoom and pan stay available by mouse.
CHART_CONFIG = {"displayModeBar": False}


def format_duration(seconds: float) -> str:
    """3.2 ms, 240 ms, 4.5 s, 2 min 05 s, 1 h 03 min."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_bytes(size: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size:.0f} B"


class ProgressBar:
    """st.progress fed with the fraction done (fed_core's progress callbacks); redraws on whole percents only."""

    def __init__(self, label: str) -> None:
        self.label, self.percent = label, -1
        self.bar = st.progress(0.0, text=label)

    def __call__(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if percent != self.percent:
            self.percent = percent
            self.bar.progress(percent / 100, text=f"{self.label} {percent}%")


@st.cache_resource
def heavy_task_gate() -> Gate:
    """Encrypted evaluations and attacks at once, for the whole server: each keeps a core busy for seconds."""
    return Gate(load_budget().heavy_tasks_at_once)


@contextmanager
def heavy_task_slot(expected_seconds: float, what: str) -> Iterator[bool]:
    """Wait a little for the server's slot for heavy work; False (saying how long to wait) if none frees up."""
    gate = heavy_task_gate()
    with st.spinner(f"Waiting for another visitor's {what} to finish…"):
        ticket = gate.acquire(expected_seconds, timeout=load_budget().heavy_task_wait_seconds)
    if ticket is None:
        st.warning(
            f"The server is busy with another visitor's {what}; it should end in about "
            f"{format_duration(gate.wait_estimate())}. Please try again then."
        )
        yield False
        return
    try:
        yield True
    finally:
        gate.release(ticket)
        give_back()  # an evaluation or attack is over: the free heap pages it used go back to the system


@contextmanager
def shown_safely(doing: str) -> Iterator[None]:
    """Never a traceback on a page: the log gets it, the user one sentence ("...while {doing}").

    Errors written for the user (fed_core's UserError: a model whose values do not fit MPC's fixed-point ring, a
    drawing or a setting it cannot take) are shown as they are; the command line catches the same base.
    """
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
    except Exception:
        log.exception("failed while %s", doing)
        st.error(f"Something went wrong while {doing}. The details are in the server log.")

"""Training runs on this server: the shared slots, who owns which run, finding a run again after a reload,
and handing an owner's model to the Draw and Encrypted Test pages.

A run belongs to the browser session that started it: that session holds a secret owner token
(``secrets.token_urlsafe``) in its ``st.session_state`` and the job compares tokens in constant time. Anyone
else who opens the run's link (``?run=<id>``) watches it read-only. A reload gives the page a new session, so
the token is also kept in a browser cookie, set by a few lines of JavaScript and read back through
``st.context.cookies`` when the new session connects. The token never appears in the URL.
"""

from __future__ import annotations

import re
import secrets

import streamlit as st

from fed_core.job import JobSlots, JobSnapshot, TrainingJob
from fed_core.limits.budget import load_budget
from ui import session

TOKEN_BYTES = 32
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")  # what secrets.token_urlsafe(32) gives; anything else is ignored


@st.cache_resource
def job_slots() -> JobSlots:
    """One set of slots for the whole server: every browser session shares them, none for longer than the
    run deadline (the time budget plus a margin)."""
    budget = load_budget()
    return JobSlots(budget.runs_per_server, budget.runs_per_session, budget.run_deadline_seconds)


def owner_token() -> str | None:
    """This session's owner token: its own, or the one its browser kept in the cookie across a reload."""
    token = st.session_state.get(session.OWNER_TOKEN)
    if token is None:
        cookie = st.context.cookies.get(session.OWNER_COOKIE)
        if isinstance(cookie, str) and TOKEN_SHAPE.fullmatch(cookie):
            token = st.session_state[session.OWNER_TOKEN] = cookie
    return token


def ensure_owner_token() -> str:
    """The session's owner token, made now if it has none yet."""
    token = owner_token()
    if token is None:
        token = st.session_state[session.OWNER_TOKEN] = secrets.token_urlsafe(TOKEN_BYTES)
    return token


def remember_owner() -> None:
    """Store the session's owner token in a cookie so that a reload of the page still owns its runs.

    The cookie is SameSite=Strict (and Secure on https), sent only to this server; it lasts as long as the
    browser session. Without JavaScript, ownership simply ends with the page.
    """
    token = st.session_state.get(session.OWNER_TOKEN)
    if token is None or st.context.cookies.get(session.OWNER_COOKIE) == token:
        return
    st.html(
        "<script>document.cookie = '"
        f"{session.OWNER_COOKIE}={token}; path=/; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


def owns(job: TrainingJob) -> bool:
    return job.is_owner(owner_token())


def current_job() -> TrainingJob | None:
    """The run this session shows; after a reload or from a shared link, the run named in the URL."""
    job = st.session_state.get(session.JOB)
    if job is None and session.RUN_PARAM in st.query_params:
        job = job_slots().find(st.query_params[session.RUN_PARAM])
        st.session_state[session.JOB] = job
    return job


def keep_trained_model(job: TrainingJob, snapshot: JobSnapshot) -> None:
    """Hand the run's model (its last finished round) to the encrypted pages of the owner's session."""
    if not owns(job) or job.model is None or st.session_state.get(session.TRAINED_MODEL_JOB) == job.job_id:
        return
    last = snapshot.history[-1]
    st.session_state[session.TRAINED_MODEL] = {
        "model": job.model,
        "meta": {
            "model": job.config.model,
            "test_accuracy": last["test_accuracy"],
            "source": f"your federated run (the model of round {last['round']} of {job.config.rounds})",
            "config": job.config.to_dict(),
        },
    }
    st.session_state[session.TRAINED_MODEL_JOB] = job.job_id

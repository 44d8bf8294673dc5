"""This session's training run: the server-wide slots, finding the run again after a reload, and handing its
model to the Draw and Encrypted Test pages."""

from __future__ import annotations

import streamlit as st

from fed_core.job import JobSlots, JobSnapshot, TrainingJob
from ui import session

MAX_CONCURRENT_RUNS = 2


@st.cache_resource
def job_slots() -> JobSlots:
    """One cap for the whole server: every browser session shares these slots."""
    return JobSlots(MAX_CONCURRENT_RUNS)


def current_job() -> TrainingJob | None:
    """This session's run; after a page reload, the run named in the URL is found again."""
    job = st.session_state.get(session.JOB)
    if job is None and session.RUN_PARAM in st.query_params:
        job = job_slots().find(st.query_params[session.RUN_PARAM])
        st.session_state[session.JOB] = job
    return job


def keep_trained_model(job: TrainingJob, snapshot: JobSnapshot) -> None:
    """Hand the finished global model to the encrypted pages (same session)."""
    if job.model is None or st.session_state.get(session.TRAINED_MODEL_JOB) == job.job_id:
        return
    st.session_state[session.TRAINED_MODEL] = {
        "model": job.model,
        "meta": {
            "model": job.config.model,
            "test_accuracy": snapshot.history[-1]["test_accuracy"],
            "source": f"your federated run ({snapshot.round} rounds)",
            "config": job.config.to_dict(),
        },
    }
    st.session_state[session.TRAINED_MODEL_JOB] = job.job_id

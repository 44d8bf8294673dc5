"""The Train page's engine choice and the syft datasites panel (Streamlit only; the engines live in fed_core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from fed_core.config import SETTINGS
from fed_core.job import TrainingJob
from ui.settings_form import setting_input

if TYPE_CHECKING:
    from fed_core.engines.syft_engine import DatasiteView, SyftEngine

ENGINE_NOTES = {
    "inprocess": "All workers train together in this server process.",
    "syft": "Each worker is a syft data owner: it publishes its digits as a dataset (mock part visible, private "
    "part only readable by approved jobs) and runs the aggregator's training job each round. Owners and "
    "aggregator talk over syft's in-memory Drive service, the one syft's own tests use, so everything runs "
    "offline in this server; a real deployment gives every owner its own Google account (docs/engines.md). "
    "Each approved job hands its folder to one of the server's warm training processes (at most 2 train at "
    "once), so with 5 owners a round takes a few seconds. Secure aggregation does not run on this engine.",
    "flower": "Flower's Simulation Engine: one virtual SuperNode per worker, in Ray processes on this machine; "
    "start-up takes about 10 s. On real machines the same ClientApp and ServerApp run with "
    "flower-superlink and one flower-supernode per worker (docs/engines.md).",
}
JOB_COLUMNS = {
    "name": "job",
    "round": "round",
    "status": "status",
    "approval": "approval",
    "waited": "waited for approval (s)",
    "seconds": "ran (s)",
}


def engine_settings(column) -> tuple[str, bool]:
    """The engine select box and, for syft, the manual-approval toggle; returns (engine, manual approval)."""
    engine = setting_input(column, SETTINGS["engine"])
    manual = engine == "syft" and setting_input(column, SETTINGS["manual_approval"])
    st.caption(ENGINE_NOTES[engine])
    return engine, manual


def datasite_panels(job: TrainingJob, read_only: bool = False) -> None:
    """Each syft datasite: the mock data the aggregator sees, the size of the private data, the jobs run.

    ``read_only`` (a visitor watching someone else's run) shows everything but the Approve buttons.
    """
    if job.config.engine != "syft":
        return
    engine = job.engine
    sites = engine.datasites()
    waiting = sum(len(site.awaiting_approval) for site in sites)
    if waiting:
        press = "their owner's approval." if read_only else "their owner's approval: press Approve below."
        st.warning(f"{waiting} job(s) wait for {press}")
    with st.expander(f"Datasites: {len(sites)} data owners", expanded=bool(waiting) or engine.manual_approval):
        st.caption(
            "Owners and aggregator are connected through syft's in-memory Drive service in this server. "
            "The aggregator only ever sees each owner's mock data and the outputs of the jobs the owner "
            "approved: the weight update, the number of examples and the metrics."
        )
        if not sites:
            st.info("The data owners are publishing their datasets…")
        for site in sites:
            with st.container(border=True):
                datasite_panel(job, engine, site, read_only)


def datasite_panel(job: TrainingJob, engine: SyftEngine, site: DatasiteView, read_only: bool) -> None:
    mock, private, jobs = st.columns([2, 1, 4])
    mock.markdown(f"**{site.owner}**")
    mock.image(
        tile(site.mock_images.numpy()),
        clamp=True,
        caption="Mock data the aggregator sees: random images in the shape of the private ones",
    )
    private.metric("Private images", f"{site.private_images:,}")
    private.caption(
        f"{site.private_bytes / 1e6:.1f} MB that stay on the owner's datasite: never shown here, "
        "never read by the aggregator, only by the jobs the owner approved."
    )
    frame = pd.DataFrame([vars(j) for j in site.jobs], columns=list(JOB_COLUMNS)).rename(columns=JOB_COLUMNS)
    jobs.dataframe(frame.set_index("job"), width="stretch")
    for name in [] if read_only else site.awaiting_approval:
        if jobs.button(f"Approve {name}", key=f"approve-{job.job_id}-{site.worker}-{name}", type="primary"):
            engine.approve(site.worker, name)


def tile(images: np.ndarray, per_row: int = 8) -> np.ndarray:
    """[n, 28, 28] uint8 images as one [rows * 28, per_row * 28] picture."""
    rows = -(-len(images) // per_row)
    padded = np.zeros((rows * per_row, *images.shape[1:]), dtype=images.dtype)
    padded[: len(images)] = images
    return padded.reshape(rows, per_row, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, per_row * 28)

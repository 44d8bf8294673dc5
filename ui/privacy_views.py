"""The Train page's privacy choice and what it shows of it: epsilon, what the server sees, and each run's cost."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from fed_core.config import SETTINGS, TrainConfig
from fed_core.engines.flower_mask_seed import FLOWER_SECURE_AGGREGATION_NOTE
from fed_core.federation.server import ServerView
from fed_core.models import build_model
from fed_core.privacy.dp import Epsilon
from fed_core.privacy.policy import privacy_for
from fed_core.vocabulary import model_params, unflatten
from ui import session
from ui.common import ACCENT, SECOND, format_bytes
from ui.settings_form import setting_input

CLIENT_DP_HIDDEN = (
    "Under client-level DP this run publishes nothing per worker: not who took part in a round or dropped out, nor "
    "any worker's update, loss, accuracy, contribution or label counts, here or in the downloads. ε assumes the "
    "round's workers stay secret, and a worker known to have taken part would have spent far more. Only the global "
    "model, its test figures and ε are shown."
)
CHOICES = {
    "none": "None",
    "secure": "Secure aggregation",
    "dp": "Differential privacy",
    "both": "Both",
    "split": "Secure aggregation + DP, noise split across workers",
}
DP_KINDS = {mode: label for mode, label in SETTINGS["dp"].options().items() if mode != "none"}
SECURE_NOTE = (
    "**Secure aggregation.** Every worker adds random masks to its update that cancel out in the sum: the server "
    "learns the sum of the round's updates and, summed the same way, the mean of the workers' local loss and "
    "accuracy; of any single worker only that it took part. So the per-worker figures below go blank. A round needs "
    "at least 3 workers left (the sum of two tells each the other's update), or it is refused. It hides no more than "
    "that: the sum and the trained model still say something about the data."
)
DP_NOTES = {
    "example": "**Example-level DP (DP-SGD).** Each worker clips every training image's gradient to norm S and adds "
    "Gaussian noise of z·S to each step. ε bounds what anyone who sees that worker's updates, the server included, "
    "can learn about any one image. Workers then keep their local loss and accuracy to themselves.",
    "client": "**Client-level DP (DP-FedAvg).** Each worker's update is clipped to norm S, workers weigh the same "
    "and the server adds Gaussian noise of z·S to the sum. ε bounds what anyone who sees the global models can learn "
    "about one worker's whole data set; the server itself sees the clipped updates (or only their sum with secure "
    "aggregation). ε counts on nobody else knowing who took part in a round, so the run publishes nothing per worker: "
    "not who was sampled, nor any worker's figures or data. It needs thousands of workers per round: with 10 or 100 "
    "the noise for a small ε drowns the updates, and you will see accuracy suffer.",
}


SPLIT_SHARES = (
    "The shares are sized for the worst case: a sum is released only if at least t workers (secure aggregation's "
    "threshold) delivered, and up to c of them may collude with the server and subtract their own share, so each "
    "worker adds 1/(t − c) of the variance. More survivors only add noise; a round with t ≤ c is refused. "
    "In-process engine only."
)
SPLIT_NOTES = {
    "example": "**Secure aggregation + example-level DP, the noise split across the workers (distributed DP, "
    "FedSGD).** Every round is one DP-SGD step: each worker clips every image's gradient in a Poisson batch to "
    "norm S and sends their sum with its own share of discrete Gaussian noise, masked. The shares add up to the "
    "noise z·S of one central step, so the federation trains as central DP-SGD on the pooled data instead of "
    "paying every worker's full noise; local epochs and momentum are not used. " + SPLIT_SHARES,
    "client": "**Secure aggregation + client-level DP, the noise split across the workers (distributed DP).** "
    "Each worker clips its update to norm S and adds its own share of discrete Gaussian noise before masking it; "
    "inside the masked sum the shares add up to the noise z·S of one central DP-FedAvg step, so nobody, the "
    "server included, ever sees the sum without it. " + SPLIT_SHARES,
}


def privacy_settings(engine: str) -> dict:
    """The Privacy widgets; returns the TrainConfig fields they set."""
    with st.expander("Privacy: secure aggregation and differential privacy"):
        choice = st.radio("Privacy", list(CHOICES), format_func=CHOICES.get, horizontal=True)
        values = {"secure_aggregation": choice in ("secure", "both", "split"), "dp": "none", "dp_distributed": False}
        if values["secure_aggregation"]:
            st.markdown(SECURE_NOTE)
            if engine == "flower":
                st.warning(FLOWER_SECURE_AGGREGATION_NOTE)
        if choice == "split":
            c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
            values["dp"] = c1.radio("Protect", list(DP_KINDS), format_func=DP_KINDS.get, key="split_dp")
            values["dp_distributed"] = True
            values["dp_colluding"] = setting_input(c1, SETTINGS["dp_colluding"])
            values.update(dp_numbers(c2, c3, c4))
            st.markdown(SPLIT_NOTES[values["dp"]])
        if choice in ("dp", "both"):
            c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
            values["dp"] = c1.radio("Protect", list(DP_KINDS), format_func=DP_KINDS.get)
            values.update(dp_numbers(c2, c3, c4))
            st.markdown(DP_NOTES[values["dp"]])
    return values


def dp_numbers(*columns: st.delta_generator.DeltaGenerator) -> dict:
    """S, z and delta, one per column, as their declarations draw them (ui/settings_form.py)."""
    return {
        name: setting_input(column, SETTINGS[name])
        for name, column in zip(("dp_clip", "dp_noise", "dp_delta"), columns)
    }


def epsilon_text(history: list[dict], config: TrainConfig) -> str | None:
    """One line on the DP guarantee spent so far, or None without DP (no round recorded an epsilon)."""
    last = history[-1] if history else {}
    if last.get("epsilon") is None:
        return None
    # A record from before both accountants were kept has only the guarantee: it was RDP's.
    bounds = Epsilon(last.get("epsilon_rdp", last["epsilon"]), last.get("epsilon_prv"))
    return privacy_for(config).epsilon_sentence(bounds)


def server_view_figure(view: ServerView, model_name: str) -> go.Figure:
    """The first layer's filters of the worker's own update beside what the server received, and both histograms."""
    template = model_params(build_model(model_name))
    first = next(iter(template))
    rows = [("its own update", view.update), ("what the server received", view.received)]
    rows = [(title, vector) for title, vector in rows if vector is not None]
    fig = make_subplots(
        rows=len(rows), cols=2, column_widths=[0.6, 0.4], subplot_titles=[t for title, _ in rows for t in (title, "")]
    )
    for row, (_, vector) in enumerate(rows, start=1):
        filters = unflatten(vector, template)[first].reshape(-1, *template[first].shape[-2:])[:8]
        fig.add_trace(go.Heatmap(z=_tile(filters).numpy(), colorscale="RdBu", showscale=False), row=row, col=1)
        fig.add_trace(
            go.Histogram(
                x=vector[:: max(1, len(vector) // 20_000)].numpy(), marker_color=ACCENT if row == 1 else SECOND
            ),
            row=row,
            col=2,
        )
    fig.update_layout(
        title=f"What the server sees of worker W{view.worker}: first layer's filters and all values",
        height=230 * len(rows) + 60,
        showlegend=False,
        margin=dict(t=70, b=20),
    )
    fig.update_yaxes(autorange="reversed", showticklabels=False, col=1)
    fig.update_xaxes(showticklabels=False, col=1)
    return fig


def _tile(filters: torch.Tensor) -> torch.Tensor:
    """[n, h, w] -> one [h, n * (w + 1)] strip, a blank column between filters."""
    n, h, w = filters.shape
    padded = torch.cat([filters, torch.full((n, h, 1), float("nan"))], dim=2)
    return padded.permute(1, 0, 2).reshape(h, n * (w + 1))


def remember_run(job_id: str, config: TrainConfig, history: list[dict], status: str) -> None:
    """Keep one line per finished run of this session, to compare what each privacy setting cost."""
    runs = st.session_state.setdefault(session.FINISHED_RUNS, {})
    if job_id in runs or not history:
        return
    rounds = len(history)
    runs[job_id] = {
        "privacy": privacy_for(config).label,
        "engine": config.engine,
        "workers × rounds": f"{config.workers} × {rounds}",
        "seed": config.seed,
        "seconds per round": history[-1]["elapsed"] / rounds,
        "upload per worker per round": upload_text(sum(r.get("upload_bytes", 0.0) for r in history) / rounds),
        "final accuracy": f"{history[-1]['test_accuracy']:.2%}",
        "ε": epsilon_value(history[-1].get("epsilon")),
        "status": status,
    }


def upload_text(size: float) -> str:
    """Bytes, or a dash where the run does not publish them (client-level DP: they grow with the round's size)."""
    return format_bytes(size) if math.isfinite(size) else "—"


def epsilon_value(epsilon: float | None) -> str:
    if epsilon is None:
        return "—"
    return "∞" if not math.isfinite(epsilon) else f"{epsilon:.2f}"


def runs_table() -> pd.DataFrame | None:
    runs = st.session_state.get(session.FINISHED_RUNS)
    if not runs:
        return None
    frame = pd.DataFrame(list(runs.values()))
    frame["seconds per round"] = frame["seconds per round"].map(lambda s: f"{s:.2f} s")
    return frame

"""Figures, tables and downloads of the Train page (plotly and pandas, no training logic)."""

from __future__ import annotations

import io

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from fed_core.job import JobSnapshot, TrainingJob
from fed_core.models import save_model
from fed_core.privacy.policy import privacy_for
from fed_core.report import json_text
from ui import session
from ui.common import ACCENT, SECOND


def accuracy_figure(history: list[dict]) -> go.Figure:
    rounds = [r["round"] for r in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=rounds,
            y=[100 * r["test_accuracy"] for r in history],
            name="test accuracy (%)",
            mode="lines+markers",
            line=dict(color=ACCENT, width=4),
        )
    )
    # Dotted and thinner, so the accuracy line still shows where the two autoscaled curves coincide.
    fig.add_trace(
        go.Scatter(
            x=rounds,
            y=[r["test_loss"] for r in history],
            name="test loss",
            mode="lines+markers",
            line=dict(color=SECOND, width=2, dash="dot"),
        ),
        secondary_y=True,
    )
    fig.update_layout(
        title="Global model on the 10,000 test images",
        height=340,
        margin=dict(t=50, b=30),
        legend=dict(orientation="h", y=-0.2),
        xaxis_title="round",
        xaxis_dtick=max(1, len(rounds) // 10),
    )
    fig.update_yaxes(title_text="accuracy (%)", secondary_y=False)
    fig.update_yaxes(title_text="loss", secondary_y=True)
    return fig


def contribution_figure(
    history: list[dict], cumulative: dict[int, float], cumulative_shapley: dict[int, tuple[float, float]]
) -> go.Figure:
    """Leave-one-out and Shapley contributions of each worker, this round and summed over the rounds."""
    latest = {row["worker"]: row for row in history[-1]["workers"]} if history else {}
    workers = sorted(cumulative)
    labels = [f"W{w}" for w in workers]

    def this_round(key: str) -> list[float | None]:
        return [_points(latest[w].get(key)) if w in latest else None for w in workers]

    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"round {len(history)}", "all rounds (sum)"))
    measures = (
        ("leave-one-out", ACCENT, this_round("contribution"), None, [100 * cumulative[w] for w in workers], None),
        (
            "Shapley",
            SECOND,
            this_round("shapley"),
            this_round("shapley_ci"),
            [100 * cumulative_shapley[w][0] for w in workers] if cumulative_shapley else [],
            [100 * cumulative_shapley[w][1] for w in workers] if cumulative_shapley else None,
        ),
    )
    for name, colour, now, now_ci, total, total_ci in measures:
        for col, values, ci in ((1, now, now_ci), (2, total, total_ci)):
            error = dict(type="data", array=ci, visible=True) if ci and any(c for c in ci) else None
            fig.add_trace(
                go.Bar(x=labels, y=values, name=name, marker_color=colour, error_y=error, showlegend=col == 1),
                row=1,
                col=col,
            )
    fig.update_layout(
        title="Contribution of each worker (accuracy points)",
        height=340,
        barmode="group",
        legend=dict(orientation="h", y=-0.15),
        margin=dict(t=80, b=30),
    )
    fig.update_yaxes(title_text="accuracy points")
    return fig


def _points(value: float | None) -> float | None:
    """A share of accuracy in points, or None (no bar) where the server could not tell."""
    return None if value is None or value != value else 100 * value


def label_heatmap(histogram: list[list[int]]) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=histogram,
            x=[str(d) for d in range(10)],
            y=[f"W{w}" for w in range(len(histogram))],
            colorscale="Blues",
            colorbar_title="images",
        )
    )
    fig.update_layout(
        title="Private data: images per digit",
        xaxis_title="digit",
        xaxis_dtick=1,
        height=min(600, max(340, 22 * len(histogram) + 120)),
        margin=dict(t=80, b=30),
    )
    fig.update_yaxes(autorange="reversed")
    return fig


WORKER_COLUMNS = {
    "worker": "worker",
    "examples": "examples used",
    "weight": "weight",
    "loss_before": "loss before",
    "loss_after": "loss after",
    "local_accuracy": "local accuracy",
    "update_norm": "update norm",
    "cosine_to_aggregate": "cosine to aggregate",
    "contribution": "leave-one-out",
    "shapley": "Shapley",
    "shapley_ci": "Shapley ± (95%)",
}


def worker_table(
    history: list[dict], cumulative: dict[int, float], cumulative_shapley: dict[int, tuple[float, float]]
) -> pd.DataFrame:
    frame = pd.DataFrame(history[-1]["workers"] if history else [], columns=list(WORKER_COLUMNS))
    for points in ("contribution", "shapley", "shapley_ci"):
        frame[points] = frame[points].astype(float) * 100
    # Sums over rounds only where the server could score this round's updates.
    if frame["contribution"].notna().any():
        frame["leave-one-out, all rounds"] = [100 * cumulative[w] for w in frame["worker"]]
    if cumulative_shapley and frame["shapley"].notna().any():
        frame["Shapley, all rounds"] = [100 * cumulative_shapley[w][0] for w in frame["worker"]]
    known = frame.rename(columns=WORKER_COLUMNS).set_index("worker")
    return known.dropna(axis=1, how="all")  # what the server could not know (secure aggregation, DP) is left out


def hidden_columns(table: pd.DataFrame) -> list[str]:
    """The worker figures the table leaves out because the server never learned them."""
    shown = set(table.columns)
    # Exact Shapley values have no interval: that is not something the server failed to learn.
    exact = WORKER_COLUMNS["shapley"] in shown
    return [
        label
        for key, label in WORKER_COLUMNS.items()
        if key != "worker" and label not in shown and not (key == "shapley_ci" and exact)
    ]


def round_views(job: TrainingJob, snapshot: JobSnapshot) -> tuple[go.Figure, go.Figure, go.Figure, pd.DataFrame]:
    """The charts and table of the latest round, built once per round rather than on every poll."""
    key = (job.job_id, snapshot.round)
    cached = st.session_state.get(session.ROUND_VIEWS)
    if cached is None or cached[0] != key:
        history, cumulative, shapley = snapshot.history, snapshot.cumulative_contributions, snapshot.cumulative_shapley
        cached = (
            key,
            (
                accuracy_figure(history),
                contribution_figure(history, cumulative, shapley),
                label_heatmap(snapshot.label_histogram),
                worker_table(history, cumulative, shapley),
            ),
        )
        st.session_state[session.ROUND_VIEWS] = cached
    return cached[1]


def local_means_text(means: dict[str, float] | None, secure: bool) -> str | None:
    """One line on the workers' own training figures, as the server holds them: means over the round only."""
    if means is None:
        return None
    how = "summed through the same masks as the updates, so the server holds only these means" if secure else ""
    return (
        f"Workers' own training, mean over the round weighted by examples: loss {means['loss_before']:.4f} before, "
        f"{means['loss_after']:.4f} after local training; local accuracy {means['local_accuracy']:.2%}"
        + (f" ({how})." if how else ".")
    )


def metrics_csv(history: list[dict]) -> str:
    """One line per worker of each round, or one per round where the run publishes no worker's figures."""
    rows = []
    for r in history:
        means = {f"mean_{name}": value for name, value in (r.get("local_means") or {}).items()}
        base = {"round": r["round"], "test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"], **means}
        if r.get("epsilon") is not None:
            base["epsilon"] = r["epsilon"]
        rows += [{**base, **w} for w in r["workers"]] or [base]
    return pd.DataFrame(rows).to_csv(index=False)


def metrics_json(job: TrainingJob, snapshot: JobSnapshot) -> str:
    """The run as JSON; under client-level DP without the per-worker sums and label counts (server.published)."""
    per_worker = {
        "label_histogram": snapshot.label_histogram,
        "cumulative_contributions": snapshot.cumulative_contributions,
    }
    return json_text(
        {
            "config": job.config.to_dict(),
            "status": snapshot.status,
            "rounds": snapshot.history,
            **(per_worker if privacy_for(job.config).publishes_workers else {}),
            "wall_seconds": snapshot.elapsed,
        }
    )


def model_bytes(job: TrainingJob, snapshot: JobSnapshot) -> bytes:
    buffer = io.BytesIO()
    save_model(
        job.model,
        buffer,
        job.config.model,
        {"config": job.config.to_dict(), "test_accuracy": snapshot.history[-1]["test_accuracy"]},
    )
    return buffer.getvalue()

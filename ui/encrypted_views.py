"""Figures and pictures of the Draw and Encrypted Test pages (plotly and numpy, no Streamlit calls)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ui.common import ACCENT, SECOND

DIGITS = [str(d) for d in range(10)]


def enlarge(pixels: np.ndarray, factor: int = 6) -> np.ndarray:
    """Blow up a small image with square pixels, so the browser does not blur it."""
    return np.kron(pixels, np.ones((factor, factor), dtype=pixels.dtype))


def probability_figure(probabilities: list[float], prediction: int) -> go.Figure:
    colours = [ACCENT if d == prediction else SECOND for d in range(10)]
    fig = go.Figure(
        go.Bar(
            x=DIGITS,
            y=[100 * p for p in probabilities],
            marker_color=colours,
            text=[f"{100 * p:.1f}%" for p in probabilities],
            textposition="outside",
        )
    )
    fig.update_layout(
        title="Decrypted probabilities",
        height=300,
        margin=dict(t=50, b=30),
        xaxis_title="digit",
        yaxis_title="probability (%)",
        yaxis_range=[0, 115],
    )
    return fig


def confusion_figure(confusion: list[list[int]]) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=confusion,
            x=DIGITS,
            y=DIGITS,
            colorscale="Blues",
            colorbar_title="images",
            text=confusion,
            texttemplate="%{text}",
            hovertemplate="true %{y}, encrypted prediction %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Confusion matrix of the encrypted predictions",
        height=460,
        margin=dict(t=50, b=30),
        xaxis_title="encrypted prediction",
        yaxis_title="true digit",
        xaxis_dtick=1,
        yaxis_dtick=1,
        yaxis_autorange="reversed",
    )
    return fig


def showcase_indices(labels: list[int], plain: list[int], encrypted: list[int], count: int = 8) -> list[int]:
    """A few test images to show: any disagreement first, then a few mistakes, then correct ones."""
    rows = list(enumerate(zip(labels, plain, encrypted)))
    disagreements = [i for i, (_, p, e) in rows if p != e]
    mistakes = [i for i, (y, p, e) in rows if p == e != y]
    correct = [i for i, (y, p, e) in rows if p == e == y]
    chosen = disagreements[:count]
    chosen += mistakes[: max(0, count // 2 - len(chosen))]
    return chosen + correct[: count - len(chosen)]

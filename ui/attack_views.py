"""The What leaks page's pictures and tables: the attack's live search, its result, and the session's attacks."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from fed_core.attack import READABLE_DB, AttackResult, match_images
from ui import session
from ui.common import ACCENT, CHART_CONFIG, SECOND
from ui.encrypted_views import enlarge

SERVERS = {
    "curious": "curious: it reads what it receives",
    "malicious": "malicious: it edits the model it sends",
}
DEFENCES = {
    "none": "its update (no protection)",
    "secure-agg": "a masked vector (secure aggregation)",
    "dp": "its update clipped, plus noise (differential privacy)",
    "both": "noise under a mask (DP, then secure aggregation)",
}
MALICIOUS_RECEIVES = {
    "none": "every worker's update (no protection)",
    "secure-agg": "only the sum of the updates (secure aggregation)",
    "dp": "every update, trained with DP-SGD (differential privacy)",
    "both": "only the sum of DP-SGD updates (both)",
}
DP_HELP = "Gaussian noise of z times the clip norm (one local step's largest move) on the clipped update."
NOISE_DB = 12.0  # below this a reconstruction is noise to the eye
PER_ROW = 16  # images per row of the grid
SHOWN = 96  # images the grid shows at most (the table and the chart count all of them)
COLUMNS_UP_TO = 8  # up to this many images, each gets its own column with its scores as captions
KEEP = 10  # attacks a session remembers

EXPLAIN = {
    ("curious", "none"): (
        "The server reads the labels from the last layer's gradient and searches for images whose update matches. "
        "For one image the square activation's hidden signs are guessed from public handwritten digits (MNIST's "
        "test set, never a worker's data). For several images it first splits the update's last layers into one "
        "part per image, then rebuilds each image and refines them all together. More images, and more local "
        "steps, make it harder: the worker's steps mix the images."
    ),
    ("curious", "secure-agg"): (
        "With secure aggregation the server holds only a masked vector, fresh random noise: there is nothing to "
        "invert. It learns only the sum of all workers' updates."
    ),
    ("curious", "dp"): (
        "With differential privacy the worker clips its update and adds noise before sending it. Enough noise "
        "drowns the images; very little noise (z near 0) still lets them through."
    ),
    ("curious", "both"): "The worker's noisy update is also masked: the server holds random noise.",
    ("malicious", "none"): (
        "The server sent a model with an extra first layer (an imprint, Fowl et al. 2022): a thousand rows that "
        "each fire for images brighter than a threshold. The difference between two neighbouring rows' gradients "
        "holds just the images between their thresholds, so each image comes back exactly, with no search."
    ),
    ("malicious", "secure-agg"): (
        "Secure aggregation does not help: the sum of all workers' updates is still a sum over images, binned by "
        "brightness, so the server reads almost every image out of the sum. Only images that share a bin are lost."
    ),
    ("malicious", "dp"): (
        "DP-SGD inside each worker (every example's gradient clipped, noise added at every step, the app's "
        "defaults) drowns the imprint: the server can no longer read any image. Client-level DP would not help "
        "here, as the server adds that noise itself and a malicious server simply does not."
    ),
    ("malicious", "both"): "DP-SGD's noise is still in the secure sum: no image comes back.",
}
CHECK_NOTE = (
    "What a worker can check: that the model it receives has the agreed architecture (this imprint adds layers, "
    "so a checking worker refuses to train it and the attack gets nothing), and that the weights moved no further "
    "than one round can move them (trap weights hidden in the agreed layers move them much further). Neither "
    "check is part of Flower or of this app's workers today, and a patient server can stay within both."
)


class LiveSearch:
    """A progress bar and the current reconstruction under the real images, redrawn a few times a second."""

    def __init__(self, truth: torch.Tensor, what: str) -> None:
        self.truth = truth
        self.bar = st.progress(0.0, text=what)
        self.picture = st.empty()
        self.drawn_at = 0.0

    def update(self, step: int, total: int, images: torch.Tensor, metrics: dict) -> None:
        if time.monotonic() - self.drawn_at < 0.3 and step < total:
            return
        self.drawn_at = time.monotonic()
        psnr = metrics.get("psnr")
        detail = f" · mean PSNR {psnr:.1f} dB" if psnr is not None and math.isfinite(psnr) else ""
        self.bar.progress(min(1.0, step / max(total, 1)), text=f"Step {step} of {total}{detail}")
        self.picture.image(grid(self.truth, images, match_images(images, self.truth.float() / 255)))

    def close(self) -> None:
        self.bar.empty()
        self.picture.empty()


def grid(truth: torch.Tensor, guesses: torch.Tensor, matched: list[int]) -> np.ndarray:
    """Rows of up to PER_ROW real images, each row with the rebuilt images paired to them underneath.

    A real image without a rebuilt one (the server found fewer) gets a black square.
    """
    count = min(len(truth), SHOWN)
    blank = np.zeros((28, 28), dtype=np.uint8)
    rebuilt = [(guesses[j].clamp(0, 1) * 255).to(torch.uint8).numpy() if j >= 0 else blank for j in matched[:count]]
    real = [truth[i].numpy() for i in range(count)]
    width = min(count, PER_ROW)
    rows = []
    for start in range(0, count, width):
        pad = [blank] * (width - len(real[start : start + width]))
        rows.append(np.concatenate(real[start : start + width] + pad, axis=1))
        rows.append(np.concatenate(rebuilt[start : start + width] + pad, axis=1))
        rows.append(np.full((4, 28 * width), 128, dtype=np.uint8))  # a grey gap between pairs of rows
    return enlarge(np.concatenate(rows[:-1], axis=0), 3 if width > 8 else 5)


def show_reconstruction(truth: torch.Tensor, labels: list[int], result: AttackResult) -> None:
    """Each real image beside what the server rebuilt, with the scores."""
    if len(truth) <= COLUMNS_UP_TO:
        for column, i in zip(st.columns(max(2, len(truth))), range(len(truth))):
            guess = result.images[result.matched[i]] if result.matched[i] >= 0 else torch.zeros(28, 28)
            column.image(enlarge(truth[i].numpy(), 6), caption=f"the worker's image (a {labels[i]})", width=168)
            column.image(
                enlarge((guess.clamp(0, 1) * 255).to(torch.uint8).numpy(), 6),
                caption=f"what the server rebuilt: PSNR {_db(result.psnr[i])}, SSIM {result.ssim[i]:.2f}",
                width=168,
            )
    else:
        st.image(grid(truth, result.images, result.matched), caption="Real images (upper rows), rebuilt (under them)")
        if len(truth) > SHOWN:
            st.caption(f"The first {SHOWN} of {len(truth)} images; the chart scores all of them.")
        st.plotly_chart(psnr_figure(result.psnr), config=CHART_CONFIG)
    if result.labels:
        right = sorted(labels) == sorted(result.labels)
        st.caption(f"Labels read from the update: {result.labels} ({'right' if right else 'wrong'}).")


def psnr_figure(psnrs: list[float]) -> go.Figure:
    """PSNR of every image, the faithful ones (>= 25 dB) in the accent colour; infinite values drawn at 100."""
    shown = [min(p, 100.0) for p in psnrs]
    colours = [ACCENT if p >= READABLE_DB else SECOND for p in psnrs]
    fig = go.Figure(go.Bar(x=list(range(1, len(psnrs) + 1)), y=shown, marker_color=colours))
    fig.add_hline(y=READABLE_DB, line_dash="dot", annotation_text=f"{READABLE_DB:.0f} dB: a faithful copy")
    fig.update_layout(
        height=260, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="image", yaxis_title="PSNR (dB)", showlegend=False
    )
    return fig


def readable(result: AttackResult) -> int:
    return sum(p >= READABLE_DB for p in result.psnr)


def verdict(result: AttackResult) -> str:
    count, total = readable(result), len(result.psnr)
    if count == total:
        return (
            f"The server read {'the image' if total == 1 else f'all {total} images'} back in {result.seconds:.1f} s "
            f"(PSNR {_db(min(result.psnr))} or better; {READABLE_DB:.0f} dB is a faithful copy)."
        )
    median = statistics.median(result.psnr)
    if count == 0 and median < NOISE_DB:
        return f"The attack failed: median PSNR {_db(median)}, below the {NOISE_DB:.0f} dB of noise."
    return (
        f"The server rebuilt {count} of {total} images faithfully (>= {READABLE_DB:.0f} dB) in {result.seconds:.1f} s; "
        f"median PSNR {_db(median)}."
    )


def explanation(server: str, defence: str) -> str:
    return EXPLAIN[(server, defence)]


def _db(value: float) -> str:
    return "∞ dB" if not math.isfinite(value) else f"{value:.1f} dB"


def remember(choice: dict, staged, result: AttackResult) -> None:
    attacks = st.session_state.setdefault(session.ATTACKS, [])
    attacks.append((choice, staged, result))
    del attacks[:-KEEP]


def received(choice: dict) -> str:
    if choice["server"] == "malicious":
        return MALICIOUS_RECEIVES[choice["defence"]]
    return DEFENCES[choice["defence"]] + (f", z = {choice['noise']:g}" if choice["defence"] in ("dp", "both") else "")


def attacks_table(attacks: list) -> pd.DataFrame:
    rows = []
    for choice, staged, result in attacks:
        finite = [p for p in result.psnr if math.isfinite(p)] or [float("inf")]
        malicious = choice["server"] == "malicious"
        rows.append(
            {
                "server": choice["server"],
                "worker": f"all {choice['workers']}" if malicious else f"W{choice['worker']}",
                "round": 1 if malicious else choice["round_idx"],
                "images": len(staged.images),
                "local steps": choice["local_steps"],
                "the server received": received(choice),
                f">= {READABLE_DB:.0f} dB": f"{readable(result)}/{len(result.psnr)}",
                "PSNR (dB)": round(float(np.median(finite)), 1),
                "SSIM": round(float(np.mean(result.ssim)), 3),
                "labels right": None if malicious else sorted(staged.labels.tolist()) == sorted(result.labels),
                "seconds": round(result.seconds, 1),
            }
        )
    return pd.DataFrame(rows)

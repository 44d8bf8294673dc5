"""The What leaks page's pictures and tables: the attack's live search, its result, and the session's attacks."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import streamlit as st
import torch

from fed_core.attack import AttackResult, StagedUpdate
from ui import session
from ui.encrypted_views import enlarge

DEFENCES = {
    "none": "its update (no protection)",
    "secure-agg": "a masked vector (secure aggregation)",
    "dp": "its update clipped, plus noise (differential privacy)",
}
DP_HELP = "Gaussian noise of z times the clip norm (one local step's largest move) on the clipped update."
NOISE_DB = 12.0  # below this a reconstruction is noise to the eye
READABLE_DB = 25.0
PUBLIC_DATA_NOTE = (
    "How the server does it: the last layer's gradient gives the label away; the square activation hides the sign "
    "of each convolution output, so the server guesses those signs from public handwritten digits (MNIST's test "
    "set, never a worker's data), then matches gradients. One image trained for one local step comes back almost "
    "exactly; an update made of several images or local steps is much harder to invert."
)
KEEP = 10  # attacks a session remembers


class LiveSearch:
    """A progress bar and the current reconstruction beside the real images, redrawn a few times a second."""

    def __init__(self, truth: torch.Tensor) -> None:
        self.truth = truth.numpy()
        self.bar = st.progress(0.0, text="The server searches for the images…")
        self.picture = st.empty()
        self.drawn_at = 0.0

    def update(self, step: int, total: int, images: torch.Tensor, metrics: dict) -> None:
        if time.monotonic() - self.drawn_at < 0.3 and step < total:
            return
        self.drawn_at = time.monotonic()
        psnr = metrics.get("psnr")
        detail = f" · PSNR {psnr:.1f} dB" if psnr is not None and math.isfinite(psnr) else ""
        self.bar.progress(min(1.0, step / max(total, 1)), text=f"Search step {step} of {total}{detail}")
        self.picture.image(side_by_side(self.truth, images.detach().numpy()), width=min(800, 180 * len(self.truth)))

    def close(self) -> None:
        self.bar.empty()
        self.picture.empty()


def side_by_side(truth: np.ndarray, guesses: np.ndarray) -> np.ndarray:
    """Real images on the top row, the current guesses under them, as one uint8 picture."""
    top = np.concatenate(list(truth), axis=1)
    bottom = np.concatenate(list((np.clip(guesses, 0, 1) * 255).astype(np.uint8)), axis=1)
    return enlarge(np.concatenate([top, bottom], axis=0), 4)


def show_reconstruction(truth: torch.Tensor, labels: list[int], result: AttackResult) -> None:
    for column, i in zip(st.columns(max(2, len(truth))), range(len(truth))):
        guess = result.images[result.matched[i]] if result.matched else result.images[i]
        column.image(enlarge(truth[i].numpy(), 6), caption=f"the worker's image (a {labels[i]})", width=168)
        column.image(
            enlarge((guess.clamp(0, 1) * 255).to(torch.uint8).numpy(), 6),
            caption=f"what the server rebuilt: PSNR {_db(result.psnr[i])}, SSIM {result.ssim[i]:.2f}",
            width=168,
        )
    right = sorted(labels) == sorted(result.labels)
    st.caption(f"Labels read from the update: {result.labels} ({'right' if right else 'wrong'}).")


def verdict(result: AttackResult) -> str:
    worst = min(result.psnr)
    if worst >= READABLE_DB:
        return (
            f"The server read the image{'s' if len(result.psnr) > 1 else ''} back from the update in "
            f"{result.seconds:.1f} s (PSNR {_db(worst)} or better; {READABLE_DB:.0f} dB is a faithful copy)."
        )
    if max(result.psnr) < NOISE_DB:
        return f"The attack failed: PSNR {_db(max(result.psnr))}, below the {NOISE_DB:.0f} dB of noise."
    return f"The server got a blurred guess: PSNR {_db(worst)} to {_db(max(result.psnr))}."


def _db(value: float) -> str:
    return "∞ dB" if not math.isfinite(value) else f"{value:.1f} dB"


def remember(choice: dict, staged: StagedUpdate, result: AttackResult) -> None:
    attacks = st.session_state.setdefault(session.ATTACKS, [])
    attacks.append((choice, staged, result))
    del attacks[:-KEEP]


def attacks_table(attacks: list) -> pd.DataFrame:
    rows = []
    for choice, staged, result in attacks:
        defence = DEFENCES[choice["defence"]] + (f", z = {choice['noise']:g}" if choice["defence"] == "dp" else "")
        finite = [p for p in result.psnr if math.isfinite(p)] or [float("inf")]
        rows.append(
            {
                "worker": f"W{choice['worker']}",
                "round": choice["round_idx"],
                "images": len(staged.images),
                "the server received": defence,
                "PSNR (dB)": round(float(np.mean(finite)), 1),
                "SSIM": round(float(np.mean(result.ssim)), 3),
                "labels right": sorted(staged.labels.tolist()) == sorted(result.labels),
                "seconds": round(result.seconds, 1),
            }
        )
    return pd.DataFrame(rows)

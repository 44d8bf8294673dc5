"""Round-level training options of the DP recipe: a learning-rate schedule and an average of the weights.

Both act between rounds on what the server holds anyway (the round index, the global vector), so
they cost no privacy: the schedule is fixed before training, and the average is post-processing of
the released models (De et al. 2022, "Unlocking High-Accuracy Differentially Private Image
Classification through Scale", average the weights with an exponential moving average).

Under DP-SGD the noise on each step does not shrink as training goes on, so the last weights wander
around the optimum by the noise; decaying the learning rate and averaging the weights both damp that
wander. Measured on MNIST at epsilon 3 (bench/private_dp.py --recipe sweep, crypto_cnn): the average
of the weights adds 0.1-0.5 points over the last weights; a cosine decay adds 0.24 alone but nothing
on top of the average (which already damps the same wander), so the recipe keeps the average only.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine", "linear")


def scheduled_lr(base: float, schedule: str, round_idx: int, rounds: int) -> float:
    """The learning rate of round ``round_idx`` (0-based) of ``rounds``.

    cosine: base * (1 + cos(pi t / T)) / 2 and linear: base * (1 - t / T), with t the round's
    midpoint, so the last round still moves (a round is many steps: its start would waste it at 0).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    if rounds < 1 or not 0 <= round_idx < rounds:
        raise ValueError(f"Round {round_idx} is outside a run of {rounds} rounds.")
    progress = (round_idx + 0.5) / rounds
    if schedule == "cosine":
        return base * (1 + math.cos(math.pi * progress)) / 2
    if schedule == "linear":
        return base * (1 - progress)
    return base


class WeightAverage:
    """Exponential moving average of flat weight vectors, with De et al.'s warm-up of the decay.

    The decay of update t is min(decay, (1 + t) / (10 + t)): the first models, far from the
    optimum, are forgotten fast, and the average settles to ``decay`` after a few dozen updates.
    decay 0 keeps the latest vector (no averaging).
    """

    def __init__(self, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"The average's decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.updates = 0
        self.value: torch.Tensor | None = None

    def update(self, vector: torch.Tensor) -> torch.Tensor:
        """Fold in the newest weights; returns the average so far."""
        rate = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.value = vector.clone() if self.value is None else torch.lerp(vector, self.value, rate)
        self.updates += 1
        return self.value

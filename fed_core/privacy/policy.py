"""The run's privacy as one object, decided once from the settings: everything the run asks of it.

A run's privacy is a combination of three choices in the settings (``TrainConfig``): secure aggregation or not,
differential privacy of one training image (``dp="example"``), of one worker's whole data (``dp="client"``) or
none, and, with both DP and secure aggregation, the noise drawn by the workers in shares (``dp_distributed``,
withstanding ``dp_colluding`` workers colluding with the server). :func:`privacy_for` turns them into one of

* :class:`Privacy`: no DP; with or without secure aggregation;
* :class:`ExampleLevelDP`: DP-SGD inside every worker (dp.py), or FedSGD with the noise split (distributed_dp.py);
* :class:`ClientLevelDP`: DP-FedAvg, the server's noise or the workers' shares, with secret Poisson sampling.

and the run asks that object, never the settings, how workers are sampled, what local training must do, how the
round's updates are bounded and released, which accountant counts epsilon, what is published per worker and how
to describe itself. ``tests/test_privacy_object.py`` keeps every other module from branching on the DP mode.

The mechanisms (clipping, noise, secure sums, accountants) stay in dp.py, distributed_dp.py and secagg.py; this
module only decides which of them a run uses. It imports nothing of federation/ or engines/ (test_layers.py), so
the settings reach it as any object with :class:`PrivacySettings`' fields, and the round's tensors as arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fed_core.privacy.distributed_dp import NoiseSplit
from fed_core.privacy.dp import (
    ClientAccountant,
    ClientDP,
    Epsilon,
    ExampleAccountant,
    ExampleDP,
    SecureRandom,
    clip_rows,
    describe_epsilon,
    poisson_plan,
    poisson_sample_workers,
    private_fedavg,
)
from fed_core.privacy.secagg_primitives import MIN_SURVIVORS

DP_MODES = ("none", "example", "client")
SECURE_AGGREGATION_ENGINES = ("inprocess", "flower")
# DP-SGD's ghost clipping (ghost_clip.py) against plain SGD, crypto_cnn, 10 workers, B=128, one thread:
# about 20k against 30k examples per CPU second (it was 7x slower with per-example gradients by vmap).
DP_SGD_SLOWDOWN = 1.5


class PrivacySettings(Protocol):
    """The settings a run's privacy is decided from (``fed_core.config.TrainConfig`` has them all)."""

    workers: int
    fraction: float
    local_epochs: int
    batch_size: int
    lr: float
    engine: str
    secure_aggregation: bool
    dp: str
    dp_clip: float
    dp_noise: float
    dp_delta: float
    dp_distributed: bool
    dp_colluding: int


@dataclass(frozen=True)
class LocalDP:
    """What local training must do for the run's privacy (LocalSettings' DP fields): DP-SGD when ``clip`` > 0."""

    clip: float = 0.0
    noise: float = 0.0
    noise_split: bool = False  # FedSGD: one step, no noise of its own; the noise comes in shares (aggregation)


Accountant = ExampleAccountant | ClientAccountant


@dataclass(frozen=True, kw_only=True)
class Privacy:
    """No differential privacy: FedAvg in the clear, or through secure aggregation when ``secure_aggregation``.

    Workers are sampled with the run's seeded generator (a fixed number, C * workers), the updates keep their
    FedAvg weights, and the workers' local loss and accuracy are released (as means under secure aggregation).
    """

    secure_aggregation: bool
    workers: int  # the run's workers, of whom a fraction C is sampled each round
    fraction: float
    differentially_private = False  # class constants: what this kind of privacy is, not a setting
    secret_sampling = False
    # Whether the run publishes anything of single workers: who took part, their figures, their data.
    publishes_workers = True

    @property
    def releases_local_stats(self) -> bool:
        """Whether the workers' local loss and accuracy leave them: never un-noised under DP, not even as means."""
        return not self.differentially_private

    @property
    def local_dp(self) -> LocalDP:
        return LocalDP()

    @property
    def label(self) -> str:
        """How the page's run table and the CLI name this privacy."""
        return " + ".join(self._label_parts()) or "none"

    def _label_parts(self) -> list[str]:
        return ["secure aggregation"] if self.secure_aggregation else []

    def sample(self, rng: np.random.Generator) -> list[int]:
        """The round's sampled workers: C * workers of them (at least one), from the run's seeded generator."""
        return sorted(rng.choice(self.workers, size=self.expected_sampled(), replace=False).tolist())

    def expected_sampled(self) -> float:
        return max(1, round(self.fraction * self.workers))

    def bound(self, deltas: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The updates [K, P] and their FedAvg weights as they enter the sum: unchanged without DP."""
        return deltas, counts

    def noise_shares(self, length: int) -> Callable[[int], np.ndarray] | None:
        """Each worker's noise share in the secure sum (secagg.secure_sum's ``noise``); None: no split noise."""
        return None

    def release(self, average: torch.Tensor, total_count: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
        """The update the server applies, from the FedAvg ``average`` of the bounded updates whose weights add up
        to ``total_count`` (``shard_sizes``: the reporting workers'). Without DP, the average itself."""
        return average

    def accountant(self) -> Accountant | None:
        """A fresh accountant of the epsilon this privacy spends, round by round; None without DP."""
        return None

    def epsilon_sentence(self, bounds: Epsilon) -> str | None:
        """The page's line on the DP guarantee spent so far; None without DP."""
        return None

    def epsilon_lines(self, bounds: Epsilon) -> list[str]:
        """The CLI's lines on the DP guarantee spent by the run; none without DP."""
        return []

    def local_training_cost(self, workers: int, train_size: int) -> float:
        """Local training time against plain SGD's, for the run's time estimate."""
        return 1.0

    def problems(self, engine: str) -> list[str]:
        """Why this privacy cannot run on ``engine`` with the run's workers, as sentences for a user."""
        out = []
        if self.secure_aggregation and engine not in SECURE_AGGREGATION_ENGINES:
            out.append(
                f"secure aggregation runs on these engines only: {', '.join(SECURE_AGGREGATION_ENGINES)}; "
                f"not on {engine}."
            )
        return out + self._round_problems()

    def _round_problems(self) -> list[str]:
        """Secure aggregation of fewer than MIN_SURVIVORS updates would reveal them: refused before the run starts.

        Rounds that lose workers to dropout, or draw too few under client-level DP's Poisson sampling, are refused
        one by one while the run goes on (secagg.py); here a setting whose every round would be refused.
        """
        if not self.secure_aggregation:
            return []
        per_round = self.expected_sampled()
        if per_round >= MIN_SURVIVORS:
            return []
        return [
            f"secure aggregation needs at least {MIN_SURVIVORS} workers in every round: the sum of one update is "
            f"that update, and of two, each worker would read the other's. {self.workers} worker(s) at fraction C = "
            f"{self.fraction:g} give {per_round:g} per round{' on average' if self.secret_sampling else ''}; "
            "raise Workers or C."
        ]


@dataclass(frozen=True, kw_only=True)
class DifferentialPrivacy(Privacy, ABC):
    """What example- and client-level DP share: clip S, noise multiplier z, delta, and the optional noise split.

    ``colluding`` is None when the noise is drawn in one piece (by each worker's DP-SGD, or by the server); else
    the workers draw it in shares inside the secure sum, sized to withstand that many colluding with the server.
    """

    clip: float
    noise: float
    delta: float
    colluding: int | None
    differentially_private = True
    level = ""  # "example" or "client", as the settings name it
    protects = ""  # what one epsilon protects, for the CLI; the page says it longer
    protects_long = ""

    @property
    @abstractmethod
    def mechanism(self) -> ExampleDP | ClientDP:
        """The Gaussian mechanism the accountant and the noise split are sized for (dp.py)."""

    @property
    def noise_split(self) -> bool:
        return self.colluding is not None

    def _label_parts(self) -> list[str]:
        parts = [*super()._label_parts(), f"{self.level}-level DP (S={self.clip:g}, z={self.noise:g})"]
        return parts + ([f"noise split across workers (c={self.colluding})"] if self.noise_split else [])

    def noise_shares(self, length: int) -> Callable[[int], np.ndarray] | None:
        return NoiseSplit(self.mechanism, self.colluding, length).sampler() if self.noise_split else None

    def epsilon_sentence(self, bounds: Epsilon) -> str:
        line = f"Privacy spent so far: {describe_epsilon(bounds)} at δ = {self.delta:g}, for {self.protects_long}."
        if self.noise_split:
            line += (
                f" The workers drew the noise in shares inside secure aggregation: it holds against the server too, "
                f"as long as at most {self.colluding} worker(s) collude with it."
            )
        return line

    def epsilon_lines(self, bounds: Epsilon) -> list[str]:
        lines = [f"{self.level}-level DP for {self.protects}: {describe_epsilon(bounds)} at δ = {self.delta:g}"]
        if self.noise_split:
            lines.append(
                "the workers added the noise in shares inside secure aggregation: it holds against the server too, "
                f"with up to {self.colluding} worker(s) colluding with it"
            )
        return lines

    def problems(self, engine: str) -> list[str]:
        split = ["noise split across workers (distributed DP) runs on the inprocess engine only."]
        return (split if self.noise_split and engine != "inprocess" else []) + super().problems(engine)


@dataclass(frozen=True, kw_only=True)
class ExampleLevelDP(DifferentialPrivacy):
    """DP-SGD inside every worker (dp.py), each worker's own noise; or, with the noise split, FedSGD: one DP-SGD
    step a round whose noise the workers draw in shares, the federation's steps central DP-SGD's."""

    batch_size: int
    local_epochs: int
    lr: float
    level = "example"
    protects = "one training image"
    protects_long = "one training image of any worker"

    @property
    def mechanism(self) -> ExampleDP:
        return ExampleDP(self.clip, self.noise)

    @property
    def local_dp(self) -> LocalDP:
        return LocalDP(self.clip, self.noise, self.noise_split)

    def bound(self, deltas: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each worker clipped its examples' gradients; under the split FedSGD's clipped sums add up unweighted."""
        return (deltas, torch.ones_like(counts)) if self.noise_split else (deltas, counts)

    def release(self, average: torch.Tensor, total_count: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
        """Under the split, central DP-SGD's step -lr * (clipped gradients + noise) / E[batch]; else the average.

        The divisor is the expected size of the pooled Poisson batch, sum of q_k n_k over the reporting workers
        (their shard sizes are public): fixed, like the trainer's, so it reveals nothing about who was in the batch.
        """
        if not self.noise_split:
            return average
        expected = sum(poisson_plan(size, self.batch_size, 1).expected_batch for size in shard_sizes)
        return (average * total_count * (-self.lr / expected)).float()

    def accountant(self) -> ExampleAccountant:
        steps = 1 if self.noise_split else None  # FedSGD: one step per round
        return ExampleAccountant(self.mechanism, self.batch_size, self.local_epochs, self.delta, steps)

    def local_training_cost(self, workers: int, train_size: int) -> float:
        if not self.noise_split:
            return DP_SGD_SLOWDOWN
        # FedSGD: one batch of B per worker a round, not E epochs
        return DP_SGD_SLOWDOWN * min(1.0, self.batch_size * workers / train_size) / self.local_epochs


@dataclass(frozen=True, kw_only=True)
class ClientLevelDP(DifferentialPrivacy):
    """DP-FedAvg (dp.py): each update clipped to S, every worker weighing the same, Gaussian noise on the sum
    (the server's, or the workers' shares under the split), divided by the expected number of workers."""

    level = "client"
    protects = "one worker's data"
    protects_long = "one worker's whole data"
    secret_sampling = True
    # Not under client-level DP: its epsilon (dp.ClientAccountant) counts on the sampling being secret, nobody
    # outside the server knowing who took part in a round. Published participation would cost far more: 30
    # rounds at C = 0.1, z = 1 spend epsilon 4.85 with secret sampling, but 15.2 for a worker known to have
    # taken part in 7 of them (dp.ClientAccountant.epsilon_if_sampling_public). So such a run publishes only
    # what the accountant covers: the noised global model's accuracy and loss, and epsilon.
    publishes_workers = False

    @property
    def mechanism(self) -> ClientDP:
        return ClientDP(self.clip, self.noise)

    def sample(self, rng: np.random.Generator) -> list[int]:
        """Each worker joins with probability C, drawn secretly: DP-FedAvg's epsilon counts on nobody outside the
        server knowing who took part (the seeded ``rng`` is left alone: the server knows the seed)."""
        return poisson_sample_workers(self.workers, self.fraction, SecureRandom())

    def expected_sampled(self) -> float:
        return self.fraction * self.workers  # a random number per round, C * workers on average

    def bound(self, deltas: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounded sensitivity: each update clipped to S, every worker weighs the same."""
        return clip_rows(deltas, self.clip), torch.ones_like(counts)

    def release(self, average: torch.Tensor, total_count: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
        """(sum of the clipped updates + noise) / (C * workers); under the split the workers' shares in the sum are
        the noise and the server adds none."""
        clipped_sum = average * total_count  # the sum over the survivors, each weighing 1
        expected = self.fraction * self.workers
        if self.noise_split:
            return (clipped_sum / expected).float()
        return private_fedavg(clipped_sum, self.mechanism, expected, SecureRandom())

    def accountant(self) -> ClientAccountant:
        return ClientAccountant(self.mechanism, self.fraction, self.delta)

    def problems(self, engine: str) -> list[str]:
        mixed = ["client-level DP with secure aggregation runs on the inprocess engine only."]
        return (mixed if self.secure_aggregation and engine != "inprocess" else []) + super().problems(engine)


def privacy_for(settings: PrivacySettings) -> Privacy:
    """The run's privacy from its settings; ValueError for a DP mode that is not one of DP_MODES.

    The noise split is taken only with secure aggregation, where its shares add up to one noise;
    :func:`privacy_problems` tells a user who asked for it without.
    """
    secure = settings.secure_aggregation
    run = {"secure_aggregation": secure, "workers": settings.workers, "fraction": settings.fraction}
    if settings.dp == "none":
        return Privacy(**run)
    common = {
        **run,
        "clip": settings.dp_clip,
        "noise": settings.dp_noise,
        "delta": settings.dp_delta,
        "colluding": settings.dp_colluding if settings.dp_distributed and secure else None,
    }
    if settings.dp == "example":
        return ExampleLevelDP(
            **common, batch_size=settings.batch_size, local_epochs=settings.local_epochs, lr=settings.lr
        )
    if settings.dp == "client":
        return ClientLevelDP(**common)
    raise ValueError(f"dp must be one of {', '.join(DP_MODES)}, got {settings.dp!r}.")


def privacy_problems(settings: PrivacySettings) -> list[str]:
    """Every reason the settings' privacy cannot run, as sentences for a user; an unknown DP mode is left to the
    settings' own check of choices."""
    if settings.dp not in DP_MODES:
        return []
    out = []
    if settings.dp_distributed and (settings.dp == "none" or not settings.secure_aggregation):
        out.append(
            "noise split across workers (distributed DP) needs DP and secure aggregation: the shares add up to one "
            "noise only inside the masked sum."
        )
    return out + privacy_for(settings).problems(settings.engine)

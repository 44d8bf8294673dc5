"""Differential privacy for the federation: what is protected, the noise, and the epsilon spent.

Two guarantees, because they protect different things:

* **Example-level DP-SGD** (Abadi et al. 2016), inside each worker: every local step
  clips each example's gradient to norm S and adds N(0, z^2 S^2) to the sum. It
  protects one training image of a worker against anyone who sees that worker's
  updates, the server included. The trainer (client.py) does the clipping.
* **Client-level DP-FedAvg** (McMahan et al. 2018): each worker's whole update is
  clipped to norm S and the server adds N(0, z^2 S^2) to their sum. It protects
  everything one worker holds, but only against those who see the global models
  (the server itself sees the clipped updates, or with secure aggregation their sum).

Epsilon comes from Opacus's RDP accountant for the Poisson-subsampled Gaussian
mechanism, so the sampling here is Poisson: each example joins each step's batch
with probability q (DP-SGD), each worker joins each round with probability C
(DP-FedAvg). The noise and the Poisson draws come from a ChaCha20 keystream keyed
from the OS: the server knows the run's seed, so anything drawn from a seeded
torch/numpy generator would be known to it, and noise it can recompute protects nothing.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


@dataclass(frozen=True)
class ExampleDP:
    """DP-SGD inside each worker: per-example clip norm S and noise multiplier z (noise std z*S on the sum)."""

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        _check(self.clip, self.noise_multiplier)


@dataclass(frozen=True)
class ClientDP:
    """DP-FedAvg on the server: per-worker update clip norm S and noise multiplier z."""

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        _check(self.clip, self.noise_multiplier)


def _check(clip: float, noise_multiplier: float) -> None:
    if not clip > 0:
        raise ValueError(f"DP clip norm must be positive, got {clip}.")
    if not noise_multiplier >= 0:
        raise ValueError(f"DP noise multiplier must be >= 0, got {noise_multiplier}.")


class SecureRandom:
    """Uniform and Gaussian draws from a ChaCha20 keystream keyed with 32 bytes from ``secrets``.

    Nothing about the run (seed, config) determines the key, so the draws cannot be
    recomputed by the server or by whoever reads the run's record.
    """

    def __init__(self) -> None:
        # The key is fresh for every instance, so a fixed nonce (and block counter 0) never repeats a stream.
        cipher = Cipher(algorithms.ChaCha20(secrets.token_bytes(32), bytes(16)), mode=None)
        self._stream = cipher.encryptor()

    def uniform(self, n: int) -> torch.Tensor:
        """n float64 draws, uniform on [0, 1) with 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64) >> np.uint64(11)
        return torch.from_numpy(words.astype(np.float64)).mul_(2.0**-53)

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
        """float32 N(0, std^2) draws of ``shape`` (Box-Muller in float64: both outputs of each pair are used)."""
        n = math.prod(shape)
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = u[:pairs].neg_().add_(1.0).log_().mul_(-2.0).sqrt_().mul_(std)  # 1 - u is in (0, 1]
        angle = u[pairs:].mul_(2 * math.pi)
        return torch.cat([radius * angle.cos(), radius * angle.sin()])[:n].to(torch.float32).view(shape)


@dataclass(frozen=True)
class PoissonPlan:
    """How a worker samples its shard under DP-SGD: ``steps`` steps, each example joins each with ``sample_rate``."""

    shard_size: int
    sample_rate: float
    steps: int

    @property
    def expected_batch(self) -> float:
        """The fixed denominator of the noisy mean gradient (the real batch size varies and is private)."""
        return self.sample_rate * self.shard_size


def poisson_plan(shard_size: int, batch_size: int, epochs: int) -> PoissonPlan:
    """ceil(n/B) steps per epoch at rate 1/ceil(n/B): each example is seen once per epoch on average, as in Opacus."""
    steps_per_epoch = max(1, math.ceil(shard_size / batch_size))
    return PoissonPlan(shard_size, 1.0 / steps_per_epoch, epochs * steps_per_epoch)


def poisson_batches(shards: list[torch.Tensor], rates: list[float], rng: SecureRandom) -> list[torch.Tensor]:
    """One step's batch of each shard: every index kept independently with its shard's rate (0 for a finished one)."""
    draws = rng.uniform(sum(len(s) for s in shards)).split([len(s) for s in shards])
    return [shard[u < rate] for shard, u, rate in zip(shards, draws, rates)]


def poisson_sample_workers(workers: int, fraction: float, rng: SecureRandom) -> list[int]:
    """The workers of a DP-FedAvg round: each joins with probability C, secretly (the accountant assumes both)."""
    return torch.nonzero(rng.uniform(workers) < fraction).flatten().tolist()


def clip_rows(rows: torch.Tensor, clip: float) -> torch.Tensor:
    """Each row of [K, P] scaled to norm at most ``clip`` (the same factor as Opacus's per-sample clipping)."""
    return rows * (clip / (rows.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)


def private_fedavg(clipped_sum: torch.Tensor, dp: ClientDP, expected_clients: float, rng: SecureRandom) -> torch.Tensor:
    """DP-FedAvg aggregate from the sum of the clipped updates: (sum + N(0, z^2 S^2)) / (C * workers).

    Both FedAvg choices that would make one worker's influence unbounded are replaced,
    as in McMahan et al. 2018's fixed-denominator estimator: every worker weighs the
    same (weights n_k / sum n would let a large shard move the mean by more than S,
    and reveal its size), and the divisor is the expected number of reporting workers
    C * W, a constant, instead of the number that actually reported, which depends on
    whether the protected worker took part. Adding or removing one worker then moves
    the sum by at most S, the sensitivity the noise is scaled to. Each worker clips its
    own update (clip_rows), so the sum may also come out of secure aggregation.
    """
    if expected_clients <= 0:
        raise ValueError(f"expected_clients must be positive, got {expected_clients}.")
    noise = rng.normal((clipped_sum.shape[0],), dp.noise_multiplier * dp.clip)
    return (clipped_sum + noise) / expected_clients


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    if any(z == 0 for z, _, _ in history):
        return math.inf
    # Here, not at the top: opacus imports its whole privacy engine (seconds), and every worker imports this module.
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta=delta)


def _add_steps(history: list[tuple[float, float, int]], noise: float, rate: float, steps: int) -> None:
    """Append (noise, rate, steps) to an Opacus history, merging with the last entry when they match."""
    if history and history[-1][:2] == (noise, rate):
        history[-1] = (noise, rate, history[-1][2] + steps)
    else:
        history.append((noise, rate, steps))


class ExampleAccountant:
    """Example-level epsilon of each worker's data, after every round that worker trained in.

    A worker that is not sampled takes no step and spends nothing; one that trains
    spends its Poisson plan's steps at its own rate q = 1/ceil(n/B). The federation's
    figure is the worst worker's. The shard size n is treated as public (it is sent
    to the server), as in Opacus.
    """

    def __init__(self, dp: ExampleDP, batch_size: int, epochs: int, delta: float) -> None:
        self.dp = dp
        self.batch_size = batch_size
        self.epochs = epochs
        self.delta = delta
        self.histories: dict[int, list[tuple[float, float, int]]] = {}

    def record_round(self, shard_sizes: dict[int, int]) -> None:
        """Call after a round with {worker: shard size} of every worker that trained in it."""
        for worker, size in shard_sizes.items():
            plan = poisson_plan(size, self.batch_size, self.epochs)
            _add_steps(self.histories.setdefault(worker, []), self.dp.noise_multiplier, plan.sample_rate, plan.steps)

    def epsilon_of(self, worker: int) -> float:
        return _epsilon(self.histories.get(worker, []), self.delta)

    def epsilon(self) -> float:
        """The federation's figure: the largest epsilon over all workers so far (0 before any training)."""
        return max((self.epsilon_of(w) for w in self.histories), default=0.0)


class ClientAccountant:
    """Client-level epsilon of DP-FedAvg: one Gaussian step per round at sample rate C.

    ``epsilon`` holds against whoever sees only the global models and relies on the
    round's workers being drawn secretly (poisson_sample_workers). Whoever also
    learns who took part in which round (the run record lists them) gets no
    amplification from sampling: ``epsilon_if_sampling_public`` composes the plain
    Gaussian mechanism over the rounds of the most frequently sampled worker.
    """

    def __init__(self, dp: ClientDP, fraction: float, delta: float) -> None:
        self.dp = dp
        self.fraction = fraction
        self.delta = delta
        self.rounds = 0
        self.participation: dict[int, int] = {}

    def record_round(self, participants: Iterable[int]) -> None:
        """Call after every round (also one nobody reported in) with the workers whose update was aggregated."""
        self.rounds += 1
        for worker in participants:
            self.participation[worker] = self.participation.get(worker, 0) + 1

    def epsilon(self) -> float:
        if self.rounds == 0:
            return 0.0
        return _epsilon([(self.dp.noise_multiplier, self.fraction, self.rounds)], self.delta)

    def epsilon_if_sampling_public(self) -> float:
        most = max(self.participation.values(), default=0)
        return _epsilon([(self.dp.noise_multiplier, 1.0, most)], self.delta) if most else 0.0

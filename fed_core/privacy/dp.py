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

Epsilon comes from two of Opacus's accountants for the Poisson-subsampled Gaussian
mechanism, on the same history: RDP (Mironov 2017) and PRV (Gopi, Lee & Wutschitz 2021,
numerical composition of privacy loss distributions, reported as its certified upper
bound). Both bound the same guarantee from above, so the smaller one holds; PRV is
usually the smaller (2.77 vs 3.21 for 150 steps at q = 1/30, z = 1, delta 1e-5). Both are
shown, and the guarantee a run reports (``epsilon()``) is the smaller. The sampling is
Poisson: each example joins each step's batch with probability q (DP-SGD), each worker
joins each round with probability C (DP-FedAvg). The noise and the Poisson draws come
from a ChaCha20 keystream keyed from the OS: the server knows the run's seed, so
anything drawn from a seeded torch/numpy generator would be known to it, and noise it
can recompute protects nothing.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

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


History = tuple[tuple[float, float, int], ...]  # Opacus's (noise multiplier, sample rate, steps) entries
# Distinct worker histories given a PRV each; beyond, one PRV of a history that dominates them all.
PRV_HISTORIES = 4


@dataclass(frozen=True)
class Epsilon:
    """Two upper bounds on the epsilon of one guarantee at one delta; the smaller holds.

    ``prv`` is None when the PRV accountant cannot handle the history (it builds a
    numerical privacy-loss grid, which very small noise can overflow); RDP alone then holds.
    """

    rdp: float
    prv: float | None

    @property
    def value(self) -> float:
        """The guarantee: the tighter of the two bounds."""
        return self.rdp if self.prv is None else min(self.rdp, self.prv)

    @classmethod
    def zero(cls) -> Epsilon:
        return cls(0.0, 0.0)


def describe_epsilon(bounds: Epsilon) -> str:
    """'epsilon = 2.77 (PRV 2.77, RDP 3.21)': the guarantee, then both accountants' bounds."""
    if not math.isfinite(bounds.value):
        return "ε = ∞ (no noise)"
    prv = "PRV n/a" if bounds.prv is None else f"PRV {bounds.prv:.2f}"
    return f"ε = {bounds.value:.2f} ({prv}, RDP {bounds.rdp:.2f}; the smaller holds)"


def epsilon_of_history(history: Iterable[tuple[float, float, int]], delta: float) -> Epsilon:
    """Both accountants' epsilon for an Opacus history; infinite for a step without noise."""
    history = tuple(history)
    if not history:
        return Epsilon.zero()
    if any(z == 0 for z, _, _ in history):
        return Epsilon(math.inf, math.inf)
    return _cached_epsilon(history, delta)


def _rdp_epsilon(history: History, delta: float) -> float:
    if any(z == 0 for z, _, _ in history):
        return math.inf
    # Here, not at the top: opacus imports its whole privacy engine (seconds), and every worker imports this module.
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():  # at large noise the best order is its grid's last: a valid, looser bound
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return accountant.get_epsilon(delta=delta)


@lru_cache(maxsize=1024)
def _cached_epsilon(history: History, delta: float) -> Epsilon:
    """Cached: PRV takes 0.2-1 s (more at small noise), and workers with the same history have the same figure."""
    from opacus.accountants import PRVAccountant

    prv = PRVAccountant()
    prv.history = list(history)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # PRV's grid takes logs of 0 at its edges (harmless: a NaN or overflow makes it raise, caught below).
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            prv_epsilon = prv.get_epsilon(delta=delta)
        except (ValueError, RuntimeError, FloatingPointError, OverflowError):
            prv_epsilon = None
    if prv_epsilon is not None and not math.isfinite(prv_epsilon):
        prv_epsilon = None
    return Epsilon(_rdp_epsilon(history, delta), prv_epsilon)


def noise_for_epsilon(epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier whose tighter bound (RDP or PRV) after ``steps`` steps is at most ``epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    noises = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # RDP's search tries tiny noises whose best order is off its grid
        for accountant in ("rdp", "prv"):
            try:
                noises.append(
                    get_noise_multiplier(
                        target_epsilon=epsilon,
                        target_delta=delta,
                        sample_rate=sample_rate,
                        steps=steps,
                        accountant=accountant,
                    )
                )
            except (ValueError, RuntimeError, FloatingPointError, OverflowError):
                continue  # PRV cannot reach some targets; RDP always can
    return min(noises)


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

    def __init__(
        self, dp: ExampleDP, batch_size: int, epochs: int, delta: float, steps_per_round: int | None = None
    ) -> None:
        self.dp = dp
        self.batch_size = batch_size
        self.epochs = epochs
        self.delta = delta
        self.steps_per_round = steps_per_round  # FedSGD: 1; by default the Poisson plan's
        self.histories: dict[int, list[tuple[float, float, int]]] = {}

    def record_round(self, shard_sizes: dict[int, int]) -> None:
        """Call after a round with {worker: shard size} of every worker that trained in it."""
        for worker, size in shard_sizes.items():
            plan = poisson_plan(size, self.batch_size, self.epochs)
            steps = plan.steps if self.steps_per_round is None else self.steps_per_round
            _add_steps(self.histories.setdefault(worker, []), self.dp.noise_multiplier, plan.sample_rate, steps)

    def bounds_of(self, worker: int) -> Epsilon:
        return epsilon_of_history(self.histories.get(worker, []), self.delta)

    def epsilon_of(self, worker: int) -> float:
        return self.bounds_of(worker).value

    def bounds(self) -> Epsilon:
        """The federation's figures: each accountant's largest epsilon over all workers so far (0 before training).

        Each maximum bounds every worker's guarantee, so the smaller of the two does too.
        """
        histories = {tuple(h) for h in self.histories.values()}
        if not histories:
            return Epsilon.zero()
        rdp = max(_rdp_epsilon(h, self.delta) for h in histories)
        if len(histories) > PRV_HISTORIES:
            # A PRV for each would take seconds a round. One history dominates them all: every step
            # at the largest rate (the subsampled Gaussian's privacy loss grows with q), as many
            # steps as the busiest worker took. Sound, and looser only when rates differ.
            rate = max(q for h in histories for _, q, _ in h)
            steps = max(sum(n for _, _, n in h) for h in histories)
            return Epsilon(rdp, epsilon_of_history([(self.dp.noise_multiplier, rate, steps)], self.delta).prv)
        each = [epsilon_of_history(h, self.delta) for h in histories]
        prv = None if any(e.prv is None for e in each) else max(e.prv for e in each)
        return Epsilon(rdp, prv)

    def epsilon(self) -> float:
        """The federation's guarantee: the tighter of the two accountants' worst-worker figures."""
        return self.bounds().value


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

    def bounds(self) -> Epsilon:
        steps = [(self.dp.noise_multiplier, self.fraction, self.rounds)] if self.rounds else []
        return epsilon_of_history(steps, self.delta)

    def epsilon(self) -> float:
        return self.bounds().value

    def epsilon_if_sampling_public(self) -> float:
        most = max(self.participation.values(), default=0)
        return epsilon_of_history([(self.dp.noise_multiplier, 1.0, most)] if most else [], self.delta).value

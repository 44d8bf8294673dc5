"""Distributed DP under secure aggregation: the workers draw the noise, in shares, inside the masked sum.

Each worker adds a share of the noise to its own encoded update before masking (Kairouz,
Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation"), so the only sum ever decoded already carries one central
step's noise, and the server adds none. Two uses:

* **Client level (DP-FedAvg).** Without the split, the server of dp.private_fedavg learns the
  sum of the clipped updates before it adds the noise: it has to be trusted with it.
* **Example level (FedSGD).** Without the split, every worker adds the full noise z*S to its
  own DP-SGD steps, so the average of 10 workers is about sqrt(10) noisier than central
  DP-SGD at the same epsilon. With it, each round is one DP-SGD step: every worker sends its
  clipped gradient sum over a Poisson batch plus a share, and the server takes the step
  with the noisy total, which is central DP-SGD's step on the pooled data.

* **Discrete noise.** The masked sum is over integers mod 2^64 (secagg_primitives' fixed
  point, 2^FRAC_BITS ring units per 1.0), so the noise is the discrete Gaussian N_Z(0, s^2),
  drawn exactly by Canonne, Kamath & Steinke 2020's rejection sampler (:func:`discrete_gaussian`)
  from the ChaCha20 keystream of dp.SecureRandom.
* **Sensitivity in the ring.** The vectors are rounded coordinate by coordinate, which changes
  each by less than one ring unit; so one worker (client level, norm <= S) or one example
  (example level, moving a clipped sum by <= S) changes the rounded sum by at most
  Delta = S * 2^FRAC_BITS + sqrt(P) ring units. The noise is scaled to Delta, so its
  multiplier is z exactly with respect to the rounded vectors (Delta exceeds S by 0.002% at
  S = 1 and crypto_cnn's 67k parameters).
* **Dropouts and collusion.** A worker cannot know how many shares will reach the sum. Secure
  aggregation refuses any round with fewer than t (its threshold) surviving vectors, and up to
  c workers may collude with the server and subtract their own shares. Each worker therefore
  draws variance (z Delta)^2 / (t - c): whatever survives, the honest shares in any released
  sum carry at least (t - c) of them, variance at least (z Delta)^2, which is what the accountant
  assumes. More survivors only add noise. A round whose t is not above c is refused.
* **The accountant.** The sum of discrete Gaussians is not exactly a discrete Gaussian; for the
  share scales here (s of order 10^6 ring units and more) Kairouz et al.'s bound on the
  difference (tau <= 10 sum_k exp(-2 pi^2 s^2 k / (k + 1))) underflows to 0, and the discrete
  Gaussian's Renyi divergences are at most the continuous one's (Canonne et al.), so the
  continuous accountant's epsilon holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fed_core.privacy.dp import ClientDP, ExampleDP, SecureRandom
from fed_core.privacy.secagg import SecAggRefused
from fed_core.privacy.secagg_primitives import FRAC_BITS

RING_UNITS = 2.0**FRAC_BITS  # ring units per 1.0 of an update coordinate


def discrete_gaussian(n: int, sigma: float, rng: SecureRandom) -> np.ndarray:
    """n draws of N_Z(0, sigma^2): P(x) proportional to exp(-x^2 / (2 sigma^2)) on the integers (int64).

    Canonne, Kamath & Steinke 2020, Algorithm 3, vectorised: a discrete Laplace proposal
    Y of scale t = floor(sigma) + 1 (the difference of two geometric variables, each
    floor(-t log U)), accepted with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).
    About 70% of proposals are accepted at large sigma; the rejected ones are drawn again.
    The uniforms are float64 with 53 random bits, so the distribution is exact up to
    float64 rounding of log and exp.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    t = math.floor(sigma) + 1
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        m = int((n - filled) * 1.5) + 16
        u = rng.uniform(3 * m).numpy().reshape(3, m)
        g1, g2 = np.floor(-t * np.log1p(-u[0])), np.floor(-t * np.log1p(-u[1]))  # 1 - u is in (0, 1]
        y = g1 - g2
        accept = u[2] < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        taken = y[accept][: n - filled].astype(np.int64)
        out[filled : filled + len(taken)] = taken
        filled += len(taken)
    return out


@dataclass(frozen=True)
class NoiseSplit:
    """Client-level DP's noise as shares drawn by the workers of a secure-aggregation round."""

    dp: ClientDP | ExampleDP
    colluding: int  # workers who may collude with the server: their shares are not counted on
    length: int  # coordinates of an update

    def sensitivity(self) -> float:
        """Delta, in ring units: the clip norm scaled to the ring, plus what rounding can add (< 1 per coordinate)."""
        return self.dp.clip * RING_UNITS + math.sqrt(self.length)

    def central_sigma(self) -> float:
        """The noise one central step adds, in ring units: z * Delta."""
        return self.dp.noise_multiplier * self.sensitivity()

    def share_sigma(self, threshold: int) -> float:
        """Each worker's share: (z Delta) / sqrt(t - c), so any t survivors less c colluders carry z * Delta."""
        honest = threshold - self.colluding
        if honest < 1:
            raise SecAggRefused(
                f"this round's secure aggregation threshold is t={threshold}, not above the {self.colluding} "
                "colluding workers the noise must withstand: no share would be sure to stay hidden, so the round "
                "is refused."
            )
        return self.central_sigma() / math.sqrt(honest)

    def sampler(self) -> Callable[[int], np.ndarray]:
        """What secagg.secure_sum calls for each worker: its share for the round's threshold, from a fresh key."""

        def share(threshold: int) -> np.ndarray:
            sigma = self.share_sigma(threshold)
            if sigma == 0:
                return np.zeros(self.length, dtype=np.int64)
            return discrete_gaussian(self.length, sigma, SecureRandom())

        return share

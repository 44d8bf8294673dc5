"""How often SecureML's local truncation fails: measured on real runs, and expected.

Each party shifts its own share of a product. Unless the two shares wrap around the ring,
the result is the exact floor or one more. With one share uniform they wrap with
probability |x| / 2^64 (x the ring value before truncation, |real| * 2^(2*frac_bits)), and
the result is then off by about 2^(64 - frac_bits) units: garbage.

``measure_truncation`` runs the simulation, which holds both shares, and at every
truncation compares the result with the exact floor of the same secret, which is what a
plaintext fixed-point evaluation computes at that step. Only the simulation can do this:
in a real deployment nobody holds both shares.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from fed_core.models import CryptoCNN
from fed_core.mpc.protocol import MpcClassifier, SecureCryptoCNN, SharedTensor, reconstruct, single_threaded

RING = 2.0**64


@dataclass
class TruncationStats:
    """Truncations of one step (or of a whole run)."""

    elements: int = 0
    failures: int = 0  # off by more than one unit from the exact floor
    expected_failures: float = 0.0  # the sum of every element's failure probability |x| / 2^64
    max_abs_value: float = 0.0  # the largest |real value| before truncation

    def add(self, before: torch.Tensor, after: torch.Tensor, frac_bits: int) -> None:
        """Count one truncation: ``before`` the secret ring values, ``after`` the reconstructed result."""
        error = after - (before >> frac_bits)
        magnitude = before.double().abs()
        self.elements += before.numel()
        self.failures += int((error.abs() > 1).sum())
        self.expected_failures += float(magnitude.sum()) / RING
        self.max_abs_value = max(self.max_abs_value, float(magnitude.max()) / 2.0 ** (2 * frac_bits))

    def merge(self, other: TruncationStats) -> None:
        self.elements += other.elements
        self.failures += other.failures
        self.expected_failures += other.expected_failures
        self.max_abs_value = max(self.max_abs_value, other.max_abs_value)

    @property
    def rate(self) -> float:
        return self.failures / self.elements if self.elements else 0.0

    @property
    def rate_upper_95(self) -> float:
        """About the rate's 95% upper bound: the rule of three with no failure seen, else rate + 2 sigma."""
        if not self.elements:
            return 0.0
        return (self.failures + max(3.0, 2 * self.failures**0.5)) / self.elements


class AuditedCryptoCNN(SecureCryptoCNN):
    """The parties' network, checking each truncation against the exact floor as it goes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.truncations: dict[str, TruncationStats] = defaultdict(TruncationStats)

    def _truncate(self, x: SharedTensor, step: str) -> SharedTensor:
        result = super()._truncate(x, step)
        self.truncations[step].add(reconstruct(x), reconstruct(result), self.frac_bits)
        return result


class AuditedMpcClassifier(MpcClassifier):
    network_class = AuditedCryptoCNN


@single_threaded
def measure_truncation(model: CryptoCNN, images: torch.Tensor, batch_size: int = 1000) -> dict[str, TruncationStats]:
    """Every truncation of an MPC run over ``images``, by step, with ``"all"`` the total."""
    classifier = AuditedMpcClassifier(model)
    for batch in images.split(batch_size):
        classifier.forward(classifier.share_images(batch))
    steps = dict(classifier.network.truncations)
    total = TruncationStats()
    for stats in steps.values():
        total.merge(stats)
    return {**steps, "all": total}

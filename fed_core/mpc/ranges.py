"""Refuse an MPC run whose fixed-point values could overflow the ring or make truncation fail.

The compute parties cannot look at the values they compute, so the bounds are worked out
beforehand, in plaintext, each by the owner of what they depend on:

* The model owner bounds every step's values over every valid input. The data owner may
  share only normalised MNIST images, every pixel in [(0 - MEAN) / STD, (1 - MEAN) / STD]
  = [-0.42, 2.82]; interval arithmetic carries that box through CryptoCNN's steps (exact
  through the first layer, an over-estimate after each square). This needs the weights and
  the public pixel range only, so the model owner learns nothing about the data; the others
  learn whether the model passed and, when it fails, the offending step's bound.
* The data owner checks in plaintext that its own images lie in that range; nobody else
  learns anything from it.

The compute parties and the dealer learn nothing. Because the bounds hold for every valid
image, no check is needed inside the protocol.

With f fractional bits there are two limits:

* a product carries 2f fractional bits before truncation, so its real value must stay
  below 2^(63 - 2f) (2.1e9 for f = 16), or it wraps around the ring: certain garbage;
* truncating a value x fails with probability |x| 2^(2f) / 2^64 (see
  :mod:`fed_core.mpc.truncation`). Summed over one image's truncated values, each at its
  step's bound, that chance (the expected number of failures, a bound on the chance that
  an image meets one) must stay below ``MAX_FAILURE_PER_IMAGE``.

The bounds are pessimistic after a square, so the limit is generous. For the pretrained
model the sum at the bounds is 0.4%; the worst image gradient ascent finds reaches a 50
times smaller fc1 squared, and the real test images give 3e-7 (10^4 times smaller). A
CryptoCNN trained one epoch from Kaiming's initialisation reaches 1.4% at the bounds; the
pretrained model with every weight doubled, 32%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fed_core.data.mnist import MEAN, STD
from fed_core.models import CryptoCNN
from fed_core.mpc.model import Architecture, BilinearOp, crypto_cnn, model_parameters, squared
from fed_core.vocabulary import UserError

RING_BITS = 64
MAX_FAILURE_PER_IMAGE = 0.1
IMAGE_SHAPE = (1, 1, 28, 28)
# Normalised pixels, widened by float32 rounding (fed_core.data.mnist.normalize works in float32).
PIXEL_RANGE = ((0.0 - MEAN) / STD - 1e-4, (1.0 - MEAN) / STD + 1e-4)
ADVICE = (
    "Retrain the model so that its activations stay smaller (weight decay, a lower learning rate or fewer "
    "epochs; the pretrained model's values stay below 3.3e5), or run MPC with fewer fractional bits "
    "(frac_bits=12 allows values 256 times larger, at 16 times coarser precision)."
)


class FixedPointRangeError(UserError, ValueError):
    """The model's values or the images do not fit the fixed-point encoding of the MPC run."""


@dataclass(frozen=True)
class Interval:
    """Elementwise lower and upper bounds of a tensor."""

    lo: torch.Tensor
    hi: torch.Tensor

    @classmethod
    def pixels(cls) -> Interval:
        """Every valid normalised image."""
        low, high = PIXEL_RANGE
        ones = torch.ones(IMAGE_SHAPE, dtype=torch.float64)
        return cls(low * ones, high * ones)

    def linear(self, op: BilinearOp, weight: torch.Tensor) -> Interval:
        """Exact bounds of op(x, weight) over the box: centre through weight, radius through |weight|."""
        centre = op((self.lo + self.hi) / 2, weight)
        radius = op((self.hi - self.lo) / 2, weight.abs())
        return Interval(centre - radius, centre + radius)

    def shift(self, bias: torch.Tensor) -> Interval:
        return Interval(self.lo + bias, self.hi + bias)

    def square(self) -> Interval:
        low, high = self.lo**2, self.hi**2
        straddles_zero = (self.lo < 0) & (self.hi > 0)
        return Interval(torch.where(straddles_zero, 0.0, torch.minimum(low, high)), torch.maximum(low, high))

    @property
    def magnitude(self) -> float:
        return float(torch.maximum(self.lo.abs(), self.hi.abs()).max())


@dataclass(frozen=True)
class StepBound:
    """How large one truncated step's values can get, over every valid image."""

    step: str  # as named by the protocol: "conv", "conv squared", ...
    description: str  # for messages: "conv's outputs", "conv's outputs squared"
    bound: float  # the largest |real value| before truncation
    elements: int  # values truncated per image

    def failure_chance(self, frac_bits: int) -> float:
        """The expected failed truncations per image in this step, every value at the bound."""
        return self.elements * self.bound * 2.0 ** (2 * frac_bits - RING_BITS)


def step_bounds(model: CryptoCNN) -> list[StepBound]:
    """The model owner's bounds, in the order the protocol truncates."""
    parameters = {name: p.detach().double() for name, p in model_parameters(model).items()}
    architecture = Architecture.of(model)
    bounds = []

    def record(step: str, description: str, values: Interval) -> Interval:
        bounds.append(StepBound(step, description, values.magnitude, values.lo.numel()))
        return values

    def layer(x: Interval, name: str) -> Interval:
        product = record(name, f"{name}'s outputs", x.linear(architecture.op(name), parameters[name]))
        return product.shift(parameters[f"{name}_bias"])

    def square(x: Interval, name: str) -> Interval:
        return record(squared(name), f"{name}'s outputs squared", x.square())

    crypto_cnn(Interval.pixels(), layer, square)
    return bounds


def check_model_range(model: CryptoCNN, frac_bits: int) -> list[StepBound]:
    """The model owner's check; raises ``FixedPointRangeError`` naming the step that does not fit."""
    bounds = step_bounds(model)
    limit = 2.0 ** (RING_BITS - 1 - 2 * frac_bits)
    prefix = "{} can reach {:.2g}, too large for {} fractional bits in the {}-bit ring: "
    for step in bounds:
        if step.bound >= limit:
            raise FixedPointRangeError(
                prefix.format(step.description, step.bound, frac_bits, RING_BITS)
                + f"a product carries {2 * frac_bits} fractional bits, so values must stay below {limit:.2g} or "
                f"they wrap around the ring and the MPC result is garbage. {ADVICE}"
            )
    chance = sum(step.failure_chance(frac_bits) for step in bounds)
    if chance > MAX_FAILURE_PER_IMAGE:
        worst = max(bounds, key=lambda step: step.failure_chance(frac_bits))
        raise FixedPointRangeError(
            prefix.format(worst.description, worst.bound, frac_bits, RING_BITS)
            + f"truncating a value x fails with probability |x| / 2^{RING_BITS - 2 * frac_bits} and gives garbage; "
            f"with every value at its bound an image would meet {chance:.2g} failures on average (the limit is "
            f"{MAX_FAILURE_PER_IMAGE}). {ADVICE}"
        )
    return bounds


def check_images(images: torch.Tensor) -> None:
    """The data owner's check, on its own images: every pixel in the range the model's bounds assume."""
    if not images.numel():
        return
    low, high = float(images.min()), float(images.max())
    if low < PIXEL_RANGE[0] or high > PIXEL_RANGE[1]:
        raise FixedPointRangeError(
            f"The images hold values from {low:.3g} to {high:.3g}, outside the normalised MNIST pixel range "
            f"[{PIXEL_RANGE[0]:.3f}, {PIXEL_RANGE[1]:.3f}] that the MPC range check assumes. Normalise them "
            f"with fed_core.data.mnist.normalize (pixels 0-255 become (x / 255 - {MEAN}) / {STD})."
        )

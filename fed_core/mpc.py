"""Two-party secure inference of CryptoCNN with a dealer (additive secret sharing, Beaver triples).

Roles:
  * the model owner secret-shares the weights, the data owner secret-shares the images;
  * two compute parties each hold one share of everything and run the network; a share
    alone is a uniformly random ring element, so neither party learns images, weights or
    activations;
  * a dealer deals correlated randomness (Beaver triples) that is independent of the data;
  * only the logits are reconstructed, by the data owner.

Arithmetic is in the ring Z_(2^64): torch int64 tensors with their native wraparound.
Reals are fixed point with ``FRAC_BITS`` fractional bits. 16 bits give 1.5e-5 resolution,
while the largest product before truncation (the second square, |x| < 150 for the
pretrained CryptoCNN) stays below 2^(8+32) = 2^40, far from the 2^63 of the ring.

Truncation after each product is SecureML's local truncation (Mohassel & Zhang, 2017):
each party shifts its own share. The result is off by at most one unit in the last place,
and with probability about |x| * 2^(2*FRAC_BITS) / 2^63 per element (x the real value
before truncation: 2^-23 for |x| = 150) it is wildly wrong. Summed over every truncated
element of the 10k test set (mean |x| ~1 over ~1,350 elements per image) that is an
expected 0.006 wrong elements per full run.

Measured on this machine before choosing the design: int64 matmul in torch runs at
~14 GMAC/s on CPU (as fast as float64), so no float64-limb splitting is needed.

A simulation in one process: both parties' shares live in one ``SharedTensor``, but every
operation touches share i only with party i's data and the values the two parties open.
Randomness comes from torch's generator seeded from the OS; a deployment would use a
cryptographic PRG (and pairwise seeds to shrink the dealer's traffic).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from fed_core.models import CryptoCNN

FRAC_BITS = 16
RING_MIN, RING_MAX = -(2**63), 2**63 - 1
BYTES_PER_ELEMENT = 8

BilinearOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = TypeVar("Method", bound=Callable)


def single_threaded(method: Method) -> Method:
    """Run on one torch thread (of the calling thread only: the setting is per thread).

    Measured on the 10k test set on the 2-core machine: one thread takes ~2 s; two take
    1.8 s when the machine is quiet, but 8.4 s when other processes keep the cores busy
    (two OpenMP threads then wait for each other), against 1.7 s for one thread.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper  # type: ignore[return-value]


def encode(values: torch.Tensor, frac_bits: int = FRAC_BITS) -> torch.Tensor:
    """Reals -> fixed-point ring elements."""
    return torch.round(values.double() * 2.0**frac_bits).long()


def decode(ring: torch.Tensor, frac_bits: int = FRAC_BITS) -> torch.Tensor:
    return ring.double() / 2.0**frac_bits


def random_ring(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform elements of Z_(2^64) (as int64)."""
    return torch.randint(RING_MIN, RING_MAX, tuple(shape), dtype=torch.int64, generator=generator)


def new_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


@dataclass(frozen=True)
class SharedTensor:
    """Additive shares of a ring tensor: ``shares[0] + shares[1]`` (mod 2^64) is the secret.

    ``shares[i]`` is held by compute party i.
    """

    shares: tuple[torch.Tensor, torch.Tensor]

    @property
    def shape(self) -> torch.Size:
        return self.shares[0].shape

    def __add__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor((self.shares[0] + other.shares[0], self.shares[1] + other.shares[1]))

    def __sub__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor((self.shares[0] - other.shares[0], self.shares[1] - other.shares[1]))

    def add_public(self, value: torch.Tensor) -> SharedTensor:
        """Add a value both parties know: only party 0 adds it, or it would count twice."""
        return SharedTensor((self.shares[0] + value, self.shares[1]))

    def apply(self, linear: Callable[[torch.Tensor], torch.Tensor]) -> SharedTensor:
        """Apply a public linear map (reshape, unfold, scaling by an integer) share-wise."""
        return SharedTensor((linear(self.shares[0]), linear(self.shares[1])))


def share(secret: torch.Tensor, generator: torch.Generator) -> SharedTensor:
    mask = random_ring(secret.shape, generator)
    return SharedTensor((secret - mask, mask))


def reconstruct(shared: SharedTensor) -> torch.Tensor:
    return shared.shares[0] + shared.shares[1]


def truncate(shared: SharedTensor, bits: int = FRAC_BITS) -> SharedTensor:
    """SecureML local truncation: divide the secret by 2^bits without communication."""
    return SharedTensor((shared.shares[0] >> bits, -((-shared.shares[1]) >> bits)))


@dataclass
class Traffic:
    """What the parties send: online openings between the compute parties, and the rest."""

    sent_by_party: list[int] = field(default_factory=lambda: [0, 0])  # bytes, online phase
    rounds: int = 0  # online communication rounds, the final reveal included
    input_bytes: int = 0  # shares of images and weights sent by their owners
    dealer_bytes: int = 0  # correlated randomness sent by the dealer (offline phase)

    @property
    def online_bytes(self) -> int:
        return sum(self.sent_by_party)


class Channel:
    """The link between the two compute parties; counts what each opening costs."""

    def __init__(self) -> None:
        self.traffic = Traffic()

    def open(self, *masked: SharedTensor) -> list[torch.Tensor]:
        """Both parties send their shares of each tensor to the other: one round."""
        self._count(masked)
        return [reconstruct(m) for m in masked]

    def reveal_to_owner(self, shared: SharedTensor) -> torch.Tensor:
        """Both parties send their shares to the data owner, who alone reconstructs."""
        self._count((shared,))
        return reconstruct(shared)

    def _count(self, tensors: tuple[SharedTensor, ...]) -> None:
        size = sum(t.shares[0].numel() for t in tensors) * BYTES_PER_ELEMENT
        self.traffic.sent_by_party = [sent + size for sent in self.traffic.sent_by_party]
        self.traffic.rounds += 1


class BeaverDealer:
    """The third party: deals shared random values with known products, never sees data.

    Each weight gets one fixed random mask b; every triple for that weight reuses it, so
    the parties open w - b only once however many batches follow (w and b never change,
    so opening it again would reveal nothing new, and would cost traffic).
    """

    def __init__(self, traffic: Traffic, generator: torch.Generator | None = None) -> None:
        self.traffic = traffic
        self.generator = generator or new_generator()
        self._masks: dict[str, torch.Tensor] = {}  # the dealer's own record of each b

    def mask(self, name: str, shape: torch.Size) -> SharedTensor:
        """Shares of a new random mask b for the operand called ``name``."""
        self._masks[name] = random_ring(shape, self.generator)
        return self._deal(self._masks[name])[0]

    def triple(self, name: str, x_shape: torch.Size, op: BilinearOp) -> tuple[SharedTensor, SharedTensor]:
        """Shares of a fresh random a and of c = op(a, b), b the mask of ``name``."""
        a = random_ring(x_shape, self.generator)
        return self._deal(a, op(a, self._masks[name]))

    def square_pair(self, shape: torch.Size) -> tuple[SharedTensor, SharedTensor]:
        """Shares of random a and of a * a."""
        a = random_ring(shape, self.generator)
        return self._deal(a, a * a)

    def _deal(self, *values: torch.Tensor) -> tuple[SharedTensor, ...]:
        self.traffic.dealer_bytes += 2 * sum(v.numel() for v in values) * BYTES_PER_ELEMENT
        return tuple(share(v, self.generator) for v in values)


@dataclass(frozen=True)
class MaskedOperand:
    """A shared operand ready for products: shares of its mask b, and y - b, opened."""

    name: str
    mask: SharedTensor
    opened: torch.Tensor


def mask_operands(
    operands: dict[str, SharedTensor], dealer: BeaverDealer, channel: Channel
) -> dict[str, MaskedOperand]:
    """Open every y - b in one round."""
    masks = {name: dealer.mask(name, y.shape) for name, y in operands.items()}
    opened = channel.open(*(y - masks[name] for name, y in operands.items()))
    return {name: MaskedOperand(name, masks[name], f) for name, f in zip(operands, opened)}


def secure_bilinear(
    x: SharedTensor, y: MaskedOperand, op: BilinearOp, dealer: BeaverDealer, channel: Channel
) -> SharedTensor:
    """Shares of op(x, y) for any op linear in each argument (matmul, convolution).

    With e = x - a opened and f = y - b: op(x, y) = c + op(e, b) + op(a, f) + op(e, f).
    Party 0 folds op(e, f) into op(e, b_0 + f); the result carries 2*FRAC_BITS bits.
    """
    a, c = dealer.triple(y.name, x.shape, op)
    (e,) = channel.open(x - a)
    f, b = y.opened, y.mask.shares
    party_b = (b[0] + f, b[1])
    return SharedTensor(tuple(c.shares[i] + op(e, party_b[i]) + op(a.shares[i], f) for i in range(2)))


def secure_square(x: SharedTensor, dealer: BeaverDealer, channel: Channel) -> SharedTensor:
    """Shares of x * x from a pair (a, a^2): x^2 = a^2 + 2 e a + e^2 with e = x - a opened."""
    a, a_squared = dealer.square_pair(x.shape)
    (e,) = channel.open(x - a)
    return (a_squared + a.apply(lambda s: 2 * e * s)).add_public(e * e)


def im2col(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """[N, 1, H, W] -> [N, windows, kernel*kernel], for any dtype (torch's unfold views)."""
    patches = images[:, 0].unfold(1, kernel, stride).unfold(2, kernel, stride)
    return patches.reshape(images.shape[0], -1, kernel * kernel)


def conv_op(kernel: int, stride: int) -> BilinearOp:
    """images [N,1,H,W] x weights [C, k*k] -> [N, C*windows] in torch's (C, H, W) flatten order."""

    def conv(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (im2col(images, kernel, stride) @ weights.T).transpose(1, 2).flatten(1)

    return conv


def linear_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight.T


WEIGHTS = ("conv", "fc1", "fc2")


def share_model(model: CryptoCNN, generator: torch.Generator, frac_bits: int) -> dict[str, SharedTensor]:
    """The model owner's step: CryptoCNN's weights and biases -> shares, by layer name."""
    positions = model.fc1.in_features // model.conv.out_channels
    params = {
        "conv": model.conv.weight.flatten(1),
        # One bias per output position, in the conv output's (channel, position) order.
        "conv_bias": model.conv.bias.repeat_interleave(positions),
        "fc1": model.fc1.weight,
        "fc1_bias": model.fc1.bias,
        "fc2": model.fc2.weight,
        "fc2_bias": model.fc2.bias,
    }
    return {name: share(encode(p.detach(), frac_bits), generator) for name, p in params.items()}


class MpcClassifier:
    """Runs CryptoCNN on secret-shared images; only the data owner sees the logits."""

    @single_threaded
    def __init__(self, model: CryptoCNN, frac_bits: int = FRAC_BITS) -> None:
        self.frac_bits = frac_bits
        self.channel = Channel()
        self.dealer = BeaverDealer(self.channel.traffic)
        self.generator = new_generator()
        self.conv = conv_op(model.conv.kernel_size[0], model.conv.stride[0])
        shared = share_model(model, self.generator, frac_bits)
        self.traffic.input_bytes += sum(2 * s.shares[0].numel() for s in shared.values()) * BYTES_PER_ELEMENT
        self.biases = {name: shared[f"{name}_bias"] for name in WEIGHTS}
        self.weights = mask_operands({name: shared[name] for name in WEIGHTS}, self.dealer, self.channel)

    @property
    def traffic(self) -> Traffic:
        return self.channel.traffic

    def share_images(self, images: torch.Tensor) -> SharedTensor:
        """The data owner's step: normalised float images [N,1,28,28] -> shares."""
        self.traffic.input_bytes += 2 * images.numel() * BYTES_PER_ELEMENT
        return share(encode(images, self.frac_bits), self.generator)

    @single_threaded
    def forward(self, x: SharedTensor) -> SharedTensor:
        """The compute parties' step: shared images -> shared logits (fixed point)."""
        x = self._layer(x, "conv", self.conv)
        x = truncate(secure_square(x, self.dealer, self.channel), self.frac_bits)
        x = self._layer(x, "fc1", linear_op)
        x = truncate(secure_square(x, self.dealer, self.channel), self.frac_bits)
        return self._layer(x, "fc2", linear_op)

    def reveal(self, shared_logits: SharedTensor) -> torch.Tensor:
        """The parties send their shares to the data owner, who decodes float64 logits."""
        return decode(self.channel.reveal_to_owner(shared_logits), self.frac_bits)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Share, evaluate and reveal: float images [N,1,28,28] -> float64 logits [N, 10]."""
        return self.reveal(self.forward(self.share_images(images)))

    def _layer(self, x: SharedTensor, name: str, op: BilinearOp) -> SharedTensor:
        product = secure_bilinear(x, self.weights[name], op, self.dealer, self.channel)
        return truncate(product, self.frac_bits) + self.biases[name]

"""Two-party secure inference of CryptoCNN with a dealer (additive secret sharing, Beaver triples).

Roles:
  * the model owner secret-shares the weights, the data owner secret-shares the images;
  * two compute parties each hold one share of everything and run the network; a share
    alone is a uniformly random ring element, so neither party learns images, weights or
    activations;
  * a dealer deals correlated randomness (Beaver triples) that is independent of the data;
  * only the logits are reconstructed, by the data owner.

Randomness: every share, mask and triple is drawn from a ChaCha20 keystream keyed with 32
bytes from ``secrets`` (:class:`fed_core.mpc.prg.Prg`), so a party's shares are uniform and
unpredictable even given all its earlier ones. The owners each key their own stream. The
dealer draws one key per compute party and sends it once (CrypTen's and SPDZ's seeded
dealer): party i then draws its shares of every mask b and every a itself, party 0 also its
share of every product c, and the dealer, who holds both keys and so draws the same values,
sends party 1 only c - c_0: 103 MB for the 10k test set instead of 537 MB for both shares
of every a, b and c. ``Traffic`` counts what is really sent. torch's generator plays no part.

Arithmetic is in the ring Z_(2^64): torch int64 tensors with their native wraparound.
Reals are fixed point with ``FRAC_BITS`` fractional bits. 16 bits give 1.5e-5 resolution,
while the largest product before truncation (the second square, |x| < 150 for the
pretrained CryptoCNN) stays below 2^(8+32) = 2^40, far from the 2^63 of the ring.

Truncation after each product is SecureML's local truncation (Mohassel & Zhang, 2017):
each party shifts its own share. The result is off by at most one unit in the last place,
except when the two shares wrap around the ring, which for a uniform share happens with
probability |x| / 2^64 (x the ring value before truncation, i.e. |real| * 2^(2*FRAC_BITS)):
2^-32 per unit of the real value, 3.5e-8 for |x| = 150. The result is then off by 2^48
units. :mod:`fed_core.mpc.truncation` measures it: on the 10k test set with the pretrained
model, 0 of 12.9 million truncated elements failed, 0.003 failures expected.
:mod:`fed_core.mpc.ranges` refuses models and images whose values could overflow the ring
or make failures likely.

Measured on this machine before choosing the design: int64 matmul in torch runs at
~14 GMAC/s on CPU (as fast as float64), so no float64-limb splitting is needed.

The protocol code is written once for two forms. A ``SharedTensor`` holds the shares of
whoever runs the code: both in ``MpcClassifier``, the simulation in one process (every
operation still touches share i only with party i's data and the values both open), and
one in a party's own process (:mod:`fed_core.mpc.processes`). Channels and the dealer's
link differ between the forms; the layers do not.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from fed_core.limits.threads import threads_for
from fed_core.models import CryptoCNN
from fed_core.mpc.model import WEIGHTS, Architecture, BilinearOp, crypto_cnn, model_parameters, squared
from fed_core.mpc.prg import KEY_BYTES, Prg
from fed_core.mpc.ranges import check_images, check_model_range

FRAC_BITS = 16
BYTES_PER_ELEMENT = 8
PARTIES = (0, 1)

Method = TypeVar("Method", bound=Callable)


def single_threaded(method: Method) -> Method:
    """Run on fed_core.limits.threads' MPC thread count, one (of the calling thread only: the setting is per thread).

    Measured on the 10k test set on the 2-core machine: one thread takes ~2 s; two take
    1.8 s when the machine is quiet, but 8.4 s when other processes keep the cores busy
    (two OpenMP threads then wait for each other), against 1.7 s for one thread.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(threads_for("mpc"))
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


def nbytes(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() for t in tensors) * BYTES_PER_ELEMENT


@dataclass(frozen=True)
class SharedTensor:
    """Additive shares of a ring tensor: ``shares[0] + shares[1]`` (mod 2^64) is the secret.

    ``shares`` maps each party whose share this process holds to that share: both parties
    in the simulation, one in a party's own process.
    """

    shares: dict[int, torch.Tensor]

    @property
    def shape(self) -> torch.Size:
        return next(iter(self.shares.values())).shape

    def __add__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor({i: s + other.shares[i] for i, s in self.shares.items()})

    def __sub__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor({i: s - other.shares[i] for i, s in self.shares.items()})

    def add_public(self, value: torch.Tensor) -> SharedTensor:
        """Add a value both parties know: only party 0 adds it, or it would count twice."""
        return SharedTensor({i: s + value if i == 0 else s for i, s in self.shares.items()})

    def apply(self, linear: Callable[[torch.Tensor], torch.Tensor]) -> SharedTensor:
        """Apply a public linear map (reshape, unfold, scaling by an integer) share-wise."""
        return SharedTensor({i: linear(s) for i, s in self.shares.items()})


def share(secret: torch.Tensor, prg: Prg) -> SharedTensor:
    """An owner's step: split a ring tensor into two shares, the second a fresh uniform mask."""
    mask = prg.ring(secret.shape)
    return SharedTensor({0: secret - mask, 1: mask})


def reconstruct(shared: SharedTensor) -> torch.Tensor:
    return shared.shares[0] + shared.shares[1]


def truncate(shared: SharedTensor, bits: int = FRAC_BITS) -> SharedTensor:
    """SecureML local truncation: divide the secret by 2^bits without communication."""
    return SharedTensor({i: s >> bits if i == 0 else -((-s) >> bits) for i, s in shared.shares.items()})


@dataclass
class Traffic:
    """What is sent: online openings between the compute parties, and the rest."""

    sent_by_party: list[int] = field(default_factory=lambda: [0, 0])  # bytes, online phase
    rounds: int = 0  # online communication rounds, the final reveal included
    input_bytes: int = 0  # shares of images and weights sent by their owners
    dealer_bytes: int = 0  # keys and correlated randomness sent by the dealer (offline phase)
    links: dict[str, int] = field(default_factory=dict)  # bytes per link, "a -> b", as measured on sockets

    @property
    def online_bytes(self) -> int:
        return sum(self.sent_by_party)


class Channel(ABC):
    """The link between the two compute parties."""

    @abstractmethod
    def open(self, *masked: SharedTensor) -> list[torch.Tensor]:
        """Both parties send their shares of each tensor to the other (one round); each gets the sums."""


class SimulatedChannel(Channel):
    """Both parties in this process: an opening adds the shares and counts what sending them costs."""

    def __init__(self) -> None:
        self.traffic = Traffic()

    def open(self, *masked: SharedTensor) -> list[torch.Tensor]:
        self._count(masked)
        return [reconstruct(m) for m in masked]

    def reveal_to_owner(self, shared: SharedTensor) -> torch.Tensor:
        """Both parties send their shares to the data owner, who alone reconstructs."""
        self._count((shared,))
        return reconstruct(shared)

    def _count(self, tensors: tuple[SharedTensor, ...]) -> None:
        size = nbytes([t.shares[0] for t in tensors])
        self.traffic.sent_by_party = [sent + size for sent in self.traffic.sent_by_party]
        self.traffic.rounds += 1


class DealerLink(ABC):
    """The one-way link from the dealer to party 1, which carries party 1's shares of products."""

    @abstractmethod
    def send(self, share_1: torch.Tensor) -> None:
        """The dealer's end."""

    @abstractmethod
    def receive(self, shape: torch.Size) -> torch.Tensor:
        """Party 1's end: the next share, of a known shape."""


class SimulatedDealerLink(DealerLink):
    """The simulation holds both streams, so party 1's share is at hand: only count its bytes."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    def send(self, share_1: torch.Tensor) -> None:
        self.traffic.dealer_bytes += nbytes([share_1])

    def receive(self, shape: torch.Size) -> torch.Tensor:
        raise RuntimeError("In the simulation party 1's shares come straight from the dealer.")


def _product_shape(op: BilinearOp, x_shape: torch.Size, y: torch.Tensor) -> torch.Size:
    """The shape of op(x, y): the ops act image by image, so one image tells."""
    one = op(torch.zeros((1, *x_shape[1:]), dtype=torch.int64), y)
    return torch.Size((x_shape[0], *one.shape[1:]))


class Dealer:
    """The third party's correlated randomness, drawn from streams keyed pairwise with the parties.

    One class for each role, told apart by the streams it holds (``streams[i]`` is the stream
    keyed with party i): the dealer (and the simulation) holds both and computes the products;
    party 0's process holds stream 0 and draws its shares of a, b and c; party 1's holds stream
    1, draws its shares of a and b and receives its shares of c over ``link``. Every holder
    draws in the same order, so the streams stay in step.

    Each weight gets one fixed random mask b; every triple for that weight reuses it, so
    the parties open w - b only once however many batches follow (w and b never change,
    so opening it again would reveal nothing new, and would cost traffic).
    """

    def __init__(self, streams: dict[int, Prg], link: DealerLink) -> None:
        self.streams = streams
        self.link = link
        self._masks: dict[str, torch.Tensor] = {}  # b itself (the dealer) or this party's share of it

    @classmethod
    def simulated(cls, traffic: Traffic) -> Dealer:
        """The dealer and both parties' draws in one process; the two keys count as sent."""
        traffic.dealer_bytes += len(PARTIES) * KEY_BYTES
        return cls({i: Prg() for i in PARTIES}, SimulatedDealerLink(traffic))

    @property
    def is_dealer(self) -> bool:
        return len(self.streams) == len(PARTIES)

    def mask(self, name: str, shape: torch.Size) -> SharedTensor:
        """Shares of a new random mask b for the operand called ``name``; nothing is sent."""
        b = self._draw(shape)
        self._masks[name] = reconstruct(b) if self.is_dealer else next(iter(b.shares.values()))
        return b

    def triple(self, name: str, x_shape: torch.Size, op: BilinearOp) -> tuple[SharedTensor, SharedTensor]:
        """Shares of a fresh random a and of c = op(a, b), b the mask of ``name``."""
        a = self._draw(x_shape)
        b = self._masks[name]
        if self.is_dealer:
            return a, self._product(op(reconstruct(a), b))
        return a, self._product_share(_product_shape(op, x_shape, b))

    def square_pair(self, shape: torch.Size) -> tuple[SharedTensor, SharedTensor]:
        """Shares of random a and of a * a."""
        a = self._draw(shape)
        if self.is_dealer:
            whole = reconstruct(a)
            return a, self._product(whole * whole)
        return a, self._product_share(shape)

    def _draw(self, shape: torch.Size) -> SharedTensor:
        return SharedTensor({i: stream.ring(shape) for i, stream in self.streams.items()})

    def _product(self, c: torch.Tensor) -> SharedTensor:
        """The dealer's step: party 0 draws its share, party 1 is sent the rest."""
        c_0 = self.streams[0].ring(c.shape)
        c_1 = c - c_0
        self.link.send(c_1)
        return SharedTensor({0: c_0, 1: c_1})

    def _product_share(self, shape: torch.Size) -> SharedTensor:
        """A party's step: draw (party 0) or receive (party 1) its share of a product."""
        if 0 in self.streams:
            return SharedTensor({0: self.streams[0].ring(shape)})
        return SharedTensor({1: self.link.receive(shape)})


@dataclass(frozen=True)
class MaskedOperand:
    """A shared operand ready for products: shares of its mask b, and y - b, opened."""

    name: str
    mask: SharedTensor
    opened: torch.Tensor


def mask_operands(operands: dict[str, SharedTensor], dealer: Dealer, channel: Channel) -> dict[str, MaskedOperand]:
    """Open every y - b in one round."""
    masks = {name: dealer.mask(name, y.shape) for name, y in operands.items()}
    opened = channel.open(*(y - masks[name] for name, y in operands.items()))
    return {name: MaskedOperand(name, masks[name], f) for name, f in zip(operands, opened)}


def secure_bilinear(
    x: SharedTensor, y: MaskedOperand, op: BilinearOp, dealer: Dealer, channel: Channel
) -> SharedTensor:
    """Shares of op(x, y) for any op linear in each argument (matmul, convolution).

    With e = x - a opened and f = y - b: op(x, y) = c + op(e, b) + op(a, f) + op(e, f).
    Party 0 folds op(e, f) into op(e, b_0 + f); the result carries 2*FRAC_BITS bits.
    """
    a, c = dealer.triple(y.name, x.shape, op)
    (e,) = channel.open(x - a)
    f = y.opened
    return SharedTensor(
        {i: c.shares[i] + op(e, b + f if i == 0 else b) + op(a.shares[i], f) for i, b in y.mask.shares.items()}
    )


def secure_square(x: SharedTensor, dealer: Dealer, channel: Channel) -> SharedTensor:
    """Shares of x * x from a pair (a, a^2): x^2 = a^2 + 2 e a + e^2 with e = x - a opened."""
    a, a_squared = dealer.square_pair(x.shape)
    (e,) = channel.open(x - a)
    return (a_squared + a.apply(lambda s: 2 * e * s)).add_public(e * e)


def share_model(model: CryptoCNN, prg: Prg, frac_bits: int) -> dict[str, SharedTensor]:
    """The model owner's step: CryptoCNN's weights and biases -> shares, by layer name."""
    return {name: share(encode(p.detach(), frac_bits), prg) for name, p in model_parameters(model).items()}


class SecureCryptoCNN:
    """The compute parties' side: shared weights, masked once, and the forward pass on shares.

    Holds whichever shares its process holds (both in the simulation, one in a party's process).
    """

    def __init__(
        self,
        architecture: Architecture,
        shared_parameters: dict[str, SharedTensor],
        dealer: Dealer,
        channel: Channel,
        frac_bits: int = FRAC_BITS,
    ) -> None:
        self.architecture = architecture
        self.dealer = dealer
        self.channel = channel
        self.frac_bits = frac_bits
        self.biases = {name: shared_parameters[f"{name}_bias"] for name in WEIGHTS}
        self.weights = mask_operands({name: shared_parameters[name] for name in WEIGHTS}, dealer, channel)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Shared images [N,1,28,28] -> shared logits (fixed point)."""
        return crypto_cnn(x, self._layer, self._square)

    def _layer(self, x: SharedTensor, name: str) -> SharedTensor:
        product = secure_bilinear(x, self.weights[name], self.architecture.op(name), self.dealer, self.channel)
        return self._truncate(product, name) + self.biases[name]

    def _square(self, x: SharedTensor, name: str) -> SharedTensor:
        return self._truncate(secure_square(x, self.dealer, self.channel), squared(name))

    def _truncate(self, x: SharedTensor, step: str) -> SharedTensor:
        """``step`` names the product being truncated (:mod:`fed_core.mpc.ranges` audits by step)."""
        return truncate(x, self.frac_bits)


class MpcClassifier:
    """Runs CryptoCNN on secret-shared images; only the data owner sees the logits.

    The simulation: owners, dealer and both compute parties in this process. Refuses, with
    a ``FixedPointRangeError``, a model or images whose values could break the fixed-point
    encoding (:mod:`fed_core.mpc.ranges`).
    """

    network_class = SecureCryptoCNN  # a subclass may observe the steps (fed_core.mpc.ranges)

    @single_threaded
    def __init__(self, model: CryptoCNN, frac_bits: int = FRAC_BITS) -> None:
        check_model_range(model, frac_bits)
        self.frac_bits = frac_bits
        self.channel = SimulatedChannel()
        self.data_owner_prg = Prg()
        shared = share_model(model, Prg(), frac_bits)
        self.traffic.input_bytes += sum(2 * nbytes([s.shares[0]]) for s in shared.values())
        dealer = Dealer.simulated(self.traffic)
        self.network = self.network_class(Architecture.of(model), shared, dealer, self.channel, frac_bits)

    @property
    def traffic(self) -> Traffic:
        return self.channel.traffic

    def share_images(self, images: torch.Tensor) -> SharedTensor:
        """The data owner's step: normalised float images [N,1,28,28] -> shares."""
        check_images(images)
        self.traffic.input_bytes += 2 * images.numel() * BYTES_PER_ELEMENT
        return share(encode(images, self.frac_bits), self.data_owner_prg)

    @single_threaded
    def forward(self, x: SharedTensor) -> SharedTensor:
        """The compute parties' step: shared images -> shared logits (fixed point)."""
        return self.network.forward(x)

    def reveal(self, shared_logits: SharedTensor) -> torch.Tensor:
        """The parties send their shares to the data owner, who decodes float64 logits."""
        return decode(self.channel.reveal_to_owner(shared_logits), self.frac_bits)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Share, evaluate and reveal: float images [N,1,28,28] -> float64 logits [N, 10]."""
        return self.reveal(self.forward(self.share_images(images)))

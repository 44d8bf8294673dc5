"""What a compute party sees is uniformly random and unpredictable.

The attack below is the one a reviewer mounted when the shares came from torch's Mersenne
Twister: party 1 knows one batch of images (a public test digit, say), so from the opened
e = x - a and its own share a_1 it learns party 0's shares a_0, which are raw outputs of
party 0's stream. 624 consecutive 32-bit outputs give MT19937's whole state (each output is
the state word, tempered: untempering inverts it), hence every later a_0 and so every later
image. The control runs the same attack against torch's generator and must succeed, so the
test would catch a return to it.
"""

import random

import pytest
import torch

from fed_core.data.mnist import load_mnist, normalize
from fed_core.mpc import protocol as mpc
from fed_core.mpc.model import conv_op
from fed_core.mpc.prg import Prg
from fed_core.mpc.protocol import Dealer, SharedTensor, SimulatedChannel, encode, mask_operands, secure_bilinear, share

WORD = 0xFFFFFFFF
MT_STATE_WORDS = 624
OBSERVED = MT_STATE_WORDS // 2  # int64 ring elements, two 32-bit outputs each
# Chi-square critical values at p = 1e-5 (scipy.stats.chi2.ppf(1 - 1e-5, dof)): with a dozen
# statistics per run, a correct implementation fails about once in 10,000 runs.
CHI2_64_DOF = 124.1  # one bin per bit position
CHI2_2040_DOF = 2324.0  # 256 byte values at each of 8 byte positions


class TorchPrg(Prg):
    """How the code drew shares before the fix: torch's generator, seeded from the key."""

    def __init__(self, key: bytes | None = None) -> None:
        super().__init__(key)
        self.generator = torch.Generator().manual_seed(int.from_bytes(self.key[:8], "little") >> 1)

    def ring(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return torch.randint(-(2**63), 2**63 - 1, tuple(shape), dtype=torch.int64, generator=self.generator)


class RecordingChannel(SimulatedChannel):
    """Keeps every opened value: party 1 sees them all."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[torch.Tensor] = []

    def open(self, *masked: SharedTensor) -> list[torch.Tensor]:
        opened = super().open(*masked)
        self.opened += opened
        return opened


def untemper(y: int) -> int:
    """Invert MT19937's output tempering: the output -> the state word it came from."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(4):
        x = y ^ ((x << 7) & 0x9D2C5680)
    y = x & WORD
    x = y
    for _ in range(2):
        x = y ^ (x >> 11)
    return x


def mersenne_continuation(observed: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` ring elements an MT19937 stream yields after ``observed`` (312 elements).

    torch.randint over the whole ring makes each element from two outputs r1, r2 as
    (r1 << 32 | r2) - 2^63. Python's ``random`` is MT19937 too: loaded with the untempered
    state it continues the stream.
    """
    words = []
    for value in observed.tolist():
        unsigned = value + 2**63
        words += [unsigned >> 32, unsigned & WORD]
    clone = random.Random()
    clone.setstate((3, (*(untemper(w) for w in words), MT_STATE_WORDS), None))
    following = [(clone.getrandbits(32) << 32 | clone.getrandbits(32)) - 2**63 for _ in range(count)]
    return torch.tensor(following, dtype=torch.int64)


def known_image_attack(known: torch.Tensor, secret: torch.Tensor, conv_weights: torch.Tensor) -> torch.Tensor:
    """Party 1's guess at ``secret``'s fixed-point pixels from what it sees while both batches run."""
    channel = RecordingChannel()
    dealer = Dealer.simulated(channel.traffic)
    op = conv_op(kernel=7, stride=3)
    weight = mask_operands({"conv": share(encode(conv_weights), mpc.Prg())}, dealer, channel)["conv"]
    for images in (known, secret):
        secure_bilinear(share(encode(images), mpc.Prg()), weight, op, dealer, channel)
    _, e_known, e_secret = channel.opened
    # Party 1 replays its own stream: its share of the weights' mask, then of each a.
    own = mpc.Prg(dealer.streams[1].key)
    own.ring(conv_weights.shape)
    a1_known, a1_secret = own.ring(known.shape), own.ring(secret.shape)
    a0_known = (encode(known) - e_known - a1_known).flatten()  # e = x - a_0 - a_1
    # Party 0's stream after the observed outputs: the rest of a_0, then c_0 (one element per
    # conv output), then the secret batch's a_0.
    skipped = a0_known.numel() - OBSERVED + known.shape[0] * 512
    a0_secret = mersenne_continuation(a0_known[:OBSERVED], skipped + secret.numel())[skipped:]
    return e_secret + a1_secret + a0_secret.reshape(secret.shape)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return normalize(load_mnist().test_images[:3])


@pytest.mark.parametrize(
    "prg_class, unmasked", [(Prg, False), (TorchPrg, True)], ids=["chacha20 (the code)", "torch generator (control)"]
)
def test_party_1_cannot_predict_party_0s_masks(monkeypatch, digits, prg_class, unmasked):
    monkeypatch.setattr(mpc, "Prg", prg_class)
    conv_weights = torch.randn(8, 49, dtype=torch.float64) * 0.2
    guess = known_image_attack(digits[:1], digits[1:], conv_weights)
    truth = encode(digits[1:])
    if unmasked:
        assert torch.equal(guess, truth)  # the attack works: it would catch a return to torch's generator
    else:
        assert not (guess == truth).any()  # no pixel recovered (chance: 2^-64 per pixel)


def bit_chi_square(values: torch.Tensor) -> float:
    """Ones at each of the 64 bit positions against n/2 (each position a fair coin)."""
    bits = (values[:, None] >> torch.arange(64)) & 1
    ones = bits.sum(0).double()
    n = len(values)
    return float(((ones - n / 2) ** 2 / (n / 2) + ((n - ones) - n / 2) ** 2 / (n / 2)).sum())


def byte_chi_square(values: torch.Tensor) -> float:
    """Counts of each byte value at each of the 8 byte positions against n/256."""
    as_bytes = values.view(torch.uint8).reshape(-1, 8).long()
    counts = torch.stack([torch.bincount(as_bytes[:, k], minlength=256) for k in range(8)]).double()
    expected = len(values) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def assert_uniform(values: torch.Tensor) -> None:
    assert bit_chi_square(values) < CHI2_64_DOF
    assert byte_chi_square(values) < CHI2_2040_DOF


@pytest.mark.parametrize("secret", ["zeros", "pixels"])
def test_each_share_of_a_fixed_secret_is_uniform(digits, secret):
    n = 100_352  # 128 images
    values = torch.zeros(n, dtype=torch.int64) if secret == "zeros" else encode(digits[0].flatten()).repeat(128)
    shared = share(values, Prg())
    for party in (0, 1):
        assert_uniform(shared.shares[party])


def test_the_uniformity_test_rejects_a_biased_mask():
    biased = torch.randint(0, 2**62, (100_352,), dtype=torch.int64)  # top two bits always zero
    with pytest.raises(AssertionError):
        assert_uniform(biased)

import pytest
import torch
import torch.nn.functional as F

from fed_core.data.mnist import load_mnist, normalize
from fed_core.mpc.model import conv_op, linear_op
from fed_core.mpc.prg import Prg
from fed_core.mpc.protocol import (
    FRAC_BITS,
    Dealer,
    DealerLink,
    MpcClassifier,
    SimulatedChannel,
    decode,
    encode,
    mask_operands,
    reconstruct,
    secure_bilinear,
    secure_square,
    share,
    truncate,
)


@pytest.fixture
def prg():
    return Prg()


@pytest.fixture
def parties():
    channel = SimulatedChannel()
    return Dealer.simulated(channel.traffic), channel


def test_reconstruction_is_exact_even_at_the_ring_edges(prg):
    secret = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123456789012345])
    assert torch.equal(reconstruct(share(secret, prg)), secret)


def test_truncation_is_off_by_at_most_one_unit(prg):
    exact = torch.randn(10_000, dtype=torch.float64) * 100
    double_scaled = encode(exact, 2 * FRAC_BITS)
    truncated = reconstruct(truncate(share(double_scaled, prg)))
    assert (truncated - (double_scaled >> FRAC_BITS)).abs().max() <= 1


def masked(y: torch.Tensor, prg, parties):
    return mask_operands({"y": share(encode(y), prg)}, *parties)["y"]


def test_secure_matmul_matches_plaintext_batch_after_batch(prg, parties):
    w = torch.randn(5, 40, dtype=torch.float64)
    weight = masked(w, prg, parties)  # w - b is opened once, then reused
    for _ in range(2):
        x = torch.randn(6, 40, dtype=torch.float64)
        product = secure_bilinear(share(encode(x), prg), weight, linear_op, *parties)
        torch.testing.assert_close(decode(reconstruct(truncate(product))), x @ w.T, atol=1e-3, rtol=0)


def test_secure_convolution_matches_torch(prg, parties):
    images = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    weights = torch.randn(8, 1, 7, 7, dtype=torch.float64) * 0.3
    product = secure_bilinear(
        share(encode(images), prg),
        masked(weights.flatten(1), prg, parties),
        conv_op(kernel=7, stride=3),
        *parties,
    )
    expected = F.conv2d(images, weights, stride=3).flatten(1)
    torch.testing.assert_close(decode(reconstruct(truncate(product))), expected, atol=1e-3, rtol=0)


def test_secure_square_matches_plaintext(prg, parties):
    x = torch.randn(1000, dtype=torch.float64) * 5
    squared = decode(reconstruct(truncate(secure_square(share(encode(x), prg), *parties))))
    torch.testing.assert_close(squared, x * x, atol=1e-3, rtol=0)


def test_traffic_counts_each_opening(prg, parties):
    dealer, channel = parties
    x, w = torch.zeros(4, 10, dtype=torch.long), torch.zeros(3, 10, dtype=torch.long)
    weight = mask_operands({"w": share(w, prg)}, dealer, channel)["w"]
    secure_bilinear(share(x, prg), weight, linear_op, dealer, channel)
    secure_square(share(x, prg), dealer, channel)
    traffic = channel.traffic
    assert traffic.rounds == 3
    assert traffic.sent_by_party == [(30 + 40 + 40) * 8] * 2
    # Two stream keys, then party 1's shares of the products c = a b^T and a^2 only: the parties
    # draw their shares of b and a, and party 0 its share of c, from the keyed streams.
    assert traffic.dealer_bytes == 2 * 32 + (12 + 40) * 8


class ListLink(DealerLink):
    """The dealer's messages to party 1, kept in a list."""

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []

    def send(self, share_1: torch.Tensor) -> None:
        self.sent.append(share_1)

    def receive(self, shape: torch.Size) -> torch.Tensor:
        share_1 = self.sent.pop(0)
        assert share_1.shape == shape
        return share_1


def test_parties_draw_the_dealers_values_from_their_keyed_streams():
    keys = [Prg().key, Prg().key]
    link = ListLink()
    dealer = Dealer({i: Prg(k) for i, k in enumerate(keys)}, link)
    party_0 = Dealer({0: Prg(keys[0])}, link)
    party_1 = Dealer({1: Prg(keys[1])}, link)
    op = conv_op(kernel=7, stride=3)
    dealt = [dealer.mask("w", torch.Size([8, 49])), *dealer.triple("w", torch.Size([2, 1, 28, 28]), op)]
    dealt += dealer.square_pair(torch.Size([2, 512]))
    drawn = {}
    for i, party in enumerate([party_0, party_1]):
        drawn[i] = [party.mask("w", torch.Size([8, 49])), *party.triple("w", torch.Size([2, 1, 28, 28]), op)]
        drawn[i] += party.square_pair(torch.Size([2, 512]))
    for whole, share_0, share_1 in zip(dealt, drawn[0], drawn[1]):
        assert torch.equal(share_0.shares[0], whole.shares[0])
        assert torch.equal(share_1.shares[1], whole.shares[1])
    b, a, c, a2, a_squared = (reconstruct(s) for s in dealt)
    assert torch.equal(c, op(a, b)) and torch.equal(a_squared, a2 * a2)
    assert not link.sent  # party 1 received every share the dealer sent


def test_encrypted_forward_agrees_with_plaintext_on_mnist(trained_model):
    mnist = load_mnist()
    images, labels = normalize(mnist.test_images[:500]), mnist.test_labels[:500]
    classifier = MpcClassifier(trained_model)
    logits = classifier.logits(images)
    with torch.no_grad():
        expected = trained_model(images).double()
    assert (logits - expected).abs().max() < 0.05
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.998
    assert (logits.argmax(1) == labels).float().mean() > 0.9  # the model really is trained
    # The masked weights once, then per batch 5 openings and the reveal to the data owner.
    assert classifier.traffic.rounds == 1 + 6

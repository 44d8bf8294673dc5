import pytest
import torch
import torch.nn.functional as F

from fed_core.data import load_mnist, normalize
from fed_core.mpc import (
    FRAC_BITS,
    BeaverDealer,
    Channel,
    MpcClassifier,
    conv_op,
    decode,
    encode,
    linear_op,
    mask_operands,
    reconstruct,
    secure_bilinear,
    secure_square,
    share,
    truncate,
)

# Chi-square critical value for 15 degrees of freedom at p = 0.001.
CHI2_15_DOF = 37.7


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def parties(generator):
    channel = Channel()
    return BeaverDealer(channel.traffic, generator), channel


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def nibble_histogram(values: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.bincount((values >> shift) & 0xF, minlength=16).double()


def test_reconstruction_is_exact_even_at_the_ring_edges(generator):
    secret = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123456789012345])
    assert torch.equal(reconstruct(share(secret, generator)), secret)


@pytest.mark.parametrize("shift", [60, 0], ids=["high bits", "low bits"])
def test_each_share_alone_is_uniform_whatever_the_secret(generator, shift):
    n = 160_000
    secrets = {"zeros": torch.zeros(n, dtype=torch.long), "constant": encode(torch.full((n,), 2.5))}
    histograms = {}
    for name, secret in secrets.items():
        shared = share(secret, generator)
        for party in (0, 1):
            counts = nibble_histogram(shared.shares[party], shift)
            assert chi_square(counts, torch.full((16,), n / 16)) < CHI2_15_DOF, (name, party)
            histograms[name, party] = counts
    for party in (0, 1):
        # Two-sample test: the share's distribution does not depend on the secret.
        a, b = histograms["zeros", party], histograms["constant", party]
        pooled = (a + b) / 2
        assert chi_square(a, pooled) + chi_square(b, pooled) < CHI2_15_DOF


def test_truncation_is_off_by_at_most_one_unit(generator):
    exact = torch.randn(10_000, dtype=torch.float64) * 100
    double_scaled = encode(exact, 2 * FRAC_BITS)
    truncated = reconstruct(truncate(share(double_scaled, generator)))
    assert (truncated - (double_scaled >> FRAC_BITS)).abs().max() <= 1


def masked(y: torch.Tensor, generator, parties):
    return mask_operands({"y": share(encode(y), generator)}, *parties)["y"]


def test_secure_matmul_matches_plaintext_batch_after_batch(generator, parties):
    w = torch.randn(5, 40, dtype=torch.float64)
    weight = masked(w, generator, parties)  # w - b is opened once, then reused
    for _ in range(2):
        x = torch.randn(6, 40, dtype=torch.float64)
        product = secure_bilinear(share(encode(x), generator), weight, linear_op, *parties)
        torch.testing.assert_close(decode(reconstruct(truncate(product))), x @ w.T, atol=1e-3, rtol=0)


def test_secure_convolution_matches_torch(generator, parties):
    images = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    weights = torch.randn(8, 1, 7, 7, dtype=torch.float64) * 0.3
    product = secure_bilinear(
        share(encode(images), generator),
        masked(weights.flatten(1), generator, parties),
        conv_op(kernel=7, stride=3),
        *parties,
    )
    expected = F.conv2d(images, weights, stride=3).flatten(1)
    torch.testing.assert_close(decode(reconstruct(truncate(product))), expected, atol=1e-3, rtol=0)


def test_secure_square_matches_plaintext(generator, parties):
    x = torch.randn(1000, dtype=torch.float64) * 5
    squared = decode(reconstruct(truncate(secure_square(share(encode(x), generator), *parties))))
    torch.testing.assert_close(squared, x * x, atol=1e-3, rtol=0)


def test_traffic_counts_each_opening(generator, parties):
    dealer, channel = parties
    x, w = torch.zeros(4, 10, dtype=torch.long), torch.zeros(3, 10, dtype=torch.long)
    weight = mask_operands({"w": share(w, generator)}, dealer, channel)["w"]
    secure_bilinear(share(x, generator), weight, linear_op, dealer, channel)
    secure_square(share(x, generator), dealer, channel)
    traffic = channel.traffic
    assert traffic.rounds == 3
    assert traffic.sent_by_party == [(30 + 40 + 40) * 8] * 2
    # Shares of: the mask b, the triple's a and c = a b^T, the pair a and a^2.
    assert traffic.dealer_bytes == 2 * (30 + 40 + 12 + 40 + 40) * 8


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

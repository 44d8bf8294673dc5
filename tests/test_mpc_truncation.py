import torch

from fed_core.data.mnist import load_mnist, normalize
from fed_core.mpc.prg import Prg
from fed_core.mpc.protocol import FRAC_BITS, reconstruct, share, truncate
from fed_core.mpc.truncation import TruncationStats, measure_truncation


def test_truncation_fails_as_often_as_expected_for_huge_values():
    # |x| = 2^61 in the ring: the shares wrap with probability 2^61 / 2^64 = 1/8.
    n = 40_000
    before = torch.full((n,), 2**61, dtype=torch.int64)
    before[::2] = -(2**61)
    stats = TruncationStats()
    stats.add(before, reconstruct(truncate(share(before, Prg()))), FRAC_BITS)
    assert stats.expected_failures == n / 8
    sd = (n * (1 / 8) * (7 / 8)) ** 0.5
    assert abs(stats.failures - n / 8) < 5 * sd


def test_no_truncation_fails_on_real_images(trained_model):
    images = normalize(load_mnist().test_images[:50])
    steps = measure_truncation(trained_model, images, batch_size=20)
    assert list(steps) == ["conv", "conv squared", "fc1", "fc1 squared", "fc2", "all"]
    per_image = {"conv": 512, "conv squared": 512, "fc1": 128, "fc1 squared": 128, "fc2": 10}
    for step, elements in per_image.items():
        assert steps[step].elements == 50 * elements
    total = steps["all"]
    assert total.elements == 50 * sum(per_image.values())
    assert total.failures == 0
    assert 0 < total.expected_failures < 1e-4
    assert 1 < steps["fc1 squared"].max_abs_value < 1e4

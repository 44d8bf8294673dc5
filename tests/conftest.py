"""Shared fixtures: a small synthetic MNIST for fast tests, and the real one."""

import pytest
import torch

from devtools.quick_model import trained_crypto_cnn
from fed_core.data.mnist import Mnist, load_mnist


def synthetic_mnist(train: int = 2000, test: int = 500, seed: int = 0) -> Mnist:
    """Ten fixed random templates plus noise: learnable in a few steps, shaped like MNIST."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 28, 28, generator=gen) * 255

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=gen)
        noise = torch.randn(n, 28, 28, generator=gen) * 60
        return (templates[labels] + noise).clamp(0, 255).to(torch.uint8), labels

    train_x, train_y = draw(train)
    test_x, test_y = draw(test)
    return Mnist(train_x, train_y, test_x, test_y)


@pytest.fixture(scope="session")
def tiny_data() -> Mnist:
    return synthetic_mnist()


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def trained_model():
    """A CryptoCNN trained centrally on real MNIST (about 98%), shared by the encrypted-inference tests."""
    return trained_crypto_cnn()

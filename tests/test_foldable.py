"""A CryptoCNN trained with another quadratic activation or a factored fc1 exports as a plain CryptoCNN."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted.mpc import MpcScheme
from fed_core.models import (
    CryptoCNN,
    FoldableCryptoCNN,
    Quadratic,
    init_weights,
    is_encryptable,
    load_model,
    save_model,
)

ACTIVATIONS = [Quadratic(), Quadratic(0.25), Quadratic(0.1, 1.0), Quadratic(-0.5, 0.3, 2.0)]


def foldable(activation: Quadratic, rank: int = 0, input_scale: float = 1.0, seed: int = 0) -> FoldableCryptoCNN:
    model = FoldableCryptoCNN(activation, rank, input_scale)
    init_weights(model, "default", torch.Generator().manual_seed(seed))
    return model


def logits64(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in float64, so the comparison measures the folding, not float32 rounding of the activations."""
    return copy.deepcopy(model).double()(x.double())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("rank", "input_scale"), [(0, 1.0), (16, 1.0), (0, 3.0)])
def test_the_folded_cryptocnn_computes_the_trained_models_logits(activation, rank, input_scale):
    model = foldable(activation, rank, input_scale)
    x = normalize(load_mnist().test_images[:256])
    folded = model.fold()
    assert type(folded) is CryptoCNN and is_encryptable(folded)
    assert torch.allclose(logits64(folded, x), logits64(model, x), atol=1e-5, rtol=0)
    assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-5)  # and in the float32 the schemes get


def test_the_activation_is_a_shifted_square_plus_a_constant():
    q = Quadratic(0.3, -1.2, 0.7)
    h, k = q.as_square()
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.allclose(q(x), q.a * (x + h) ** 2 + k)
    with pytest.raises(ValueError, match="a != 0"):
        Quadratic(0.0, 1.0)


def test_the_folded_model_saves_and_loads_as_crypto_cnn(tmp_path):
    folded = foldable(Quadratic(0.5, 0.5), rank=8).fold()
    save_model(folded, tmp_path / "folded.pt", "crypto_cnn")
    loaded, meta = load_model(tmp_path / "folded.pt")
    assert meta["model"] == "crypto_cnn"
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), folded(x))


def test_mpc_on_the_folded_model_agrees_with_the_trained_model():
    """A briefly trained model with a quadratic of b != 0 (its squares' inputs shifted): MPC predicts as it does."""
    torch.manual_seed(0)
    mnist = load_mnist()
    model = foldable(Quadratic(0.5, 1.0), rank=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    images, labels = normalize(mnist.train_images[:12_800]), mnist.train_labels[:12_800]
    for batch in torch.randperm(len(images)).split(128):
        optimizer.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    x, y = normalize(mnist.test_images[:128]), mnist.test_labels[:128]
    with torch.no_grad():
        trained = model(x).argmax(1)
    result = MpcScheme().evaluate(model.fold(), x, y, batch_size=64)
    assert result.agreement == 1.0
    assert result.encrypted_predictions == trained.tolist()
    assert result.encrypted_accuracy > 0.85

"""Each initialisation draws from the distribution it names, from the run's seed; saved models load back."""

import math

import pytest
import torch

from fed_core.models import (
    ENCRYPTABLE_MODELS,
    MODELS,
    build_model,
    is_encryptable,
    load_model,
    new_model,
    save_model,
)


def fc1(init: str, seed: int = 0) -> torch.nn.Linear:
    return new_model("fedavg_cnn", init, seed).fc1  # 3136 -> 512: 1.6M weights, enough for tight statistics


def test_default_init_is_pytorchs_uniform_bound_drawn_from_the_seed():
    layer = fc1("default")
    bound = 1 / math.sqrt(layer.in_features)
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
    assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)


def test_he_init_is_normal_with_gain_sqrt2_over_fan_in_and_zero_biases():
    layer = fc1("kaiming")
    assert layer.weight.mean().item() == pytest.approx(0, abs=1e-3)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / layer.in_features), rel=0.01)
    assert torch.count_nonzero(layer.bias) == 0


def test_xavier_init_is_uniform_with_the_glorot_bound():
    layer = fc1("xavier")
    bound = math.sqrt(6 / (layer.in_features + layer.out_features))
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
    assert torch.count_nonzero(layer.bias) == 0


def test_plain_uniform_init_stays_within_five_hundredths():
    layer = fc1("uniform")
    assert 0.049 < layer.weight.abs().max() <= 0.05
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier", "uniform"])
def test_every_init_is_reproducible_from_the_seed(init):
    assert torch.equal(fc1(init, seed=3).weight, fc1(init, seed=3).weight)
    assert not torch.equal(fc1(init, seed=3).weight, fc1(init, seed=4).weight)


def test_only_the_crypto_cnn_is_encryptable():
    assert ENCRYPTABLE_MODELS == ("crypto_cnn",)
    assert is_encryptable(build_model("crypto_cnn")) and not is_encryptable(build_model("relu_cnn"))


def test_a_file_that_is_not_a_saved_model_is_refused_in_words(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch file"):
        load_model(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a model saved by fed_core"):
        load_model(other)
    saved = tmp_path / "model.pt"
    save_model(build_model("crypto_cnn"), saved, "crypto_cnn", {"round": 3})
    model, meta = load_model(saved)
    assert is_encryptable(model) and meta == {"model": "crypto_cnn", "round": 3}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_saves_and_loads_back_with_its_weights(tmp_path, name):
    model = new_model(name, "default", seed=5)
    save_model(model, tmp_path / "model.pt", name, {"round": 1})
    loaded, meta = load_model(tmp_path / "model.pt")
    assert type(loaded) is type(model) and meta == {"model": name, "round": 1}
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_tanh_cnn_is_the_dp_papers_mnist_model():
    """Tramer & Boneh's MNIST_CNN: 26,010 parameters, and not encryptable (tanh and max-pooling)."""
    model = build_model("tanh_cnn")
    assert sum(p.numel() for p in model.parameters()) == 26_010
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and not is_encryptable(model)

import copy

import pytest
import torch

from fed_core.cli import main
from fed_core.data.mnist import load_mnist, normalize
from fed_core.models import save_model
from fed_core.mpc import protocol as mpc
from fed_core.mpc.protocol import FRAC_BITS, MpcClassifier
from fed_core.mpc.ranges import FixedPointRangeError, check_images, check_model_range, step_bounds


def scaled(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    bigger = copy.deepcopy(model)
    for parameter in bigger.parameters():
        parameter.data *= factor
    return bigger


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return normalize(load_mnist().test_images[:500])


def test_the_bounds_hold_on_real_images(trained_model, images):
    bounds = {b.step: b.bound for b in check_model_range(trained_model, FRAC_BITS)}
    with torch.no_grad():
        conv = torch.nn.functional.conv2d(images, trained_model.conv.weight, stride=3)
        hidden = trained_model.fc1((conv + trained_model.conv.bias[:, None, None]).square().flatten(1))
        fc2 = hidden.square() @ trained_model.fc2.weight.T
    actual = {"conv": conv, "fc1": hidden - trained_model.fc1.bias, "fc1 squared": hidden.square(), "fc2": fc2}
    for step, values in actual.items():
        assert values.abs().max() <= bounds[step]
    assert bounds["fc2"] < 1e6  # a trained model passes with a wide margin from the 2.1e9 limit


def test_a_model_with_large_activations_is_refused_naming_the_layer(trained_model):
    with pytest.raises(FixedPointRangeError, match=r"^fc1's outputs squared can reach .* failures on average"):
        MpcClassifier(scaled(trained_model, 3))
    with pytest.raises(FixedPointRangeError, match=r"^fc1's outputs squared can reach .* wrap around the ring"):
        MpcClassifier(scaled(trained_model, 10))


def test_what_the_check_refuses_really_breaks(monkeypatch, trained_model, images):
    monkeypatch.setattr(mpc, "check_model_range", lambda model, frac_bits: None)
    model = scaled(trained_model, 15)
    with torch.no_grad():
        expected = model(images[:100]).argmax(1)
    agreement = (MpcClassifier(model).logits(images[:100]).argmax(1) == expected).float().mean()
    assert agreement < 0.5


def test_fewer_fractional_bits_accept_larger_values(trained_model):
    model = scaled(trained_model, 2)
    with pytest.raises(FixedPointRangeError):
        check_model_range(model, FRAC_BITS)
    assert len(check_model_range(model, frac_bits=12)) == len(step_bounds(model))


def test_images_outside_the_normalised_range_are_refused(trained_model, images):
    check_images(images)
    with pytest.raises(FixedPointRangeError, match="Normalise them"):
        MpcClassifier(trained_model).share_images(load_mnist().test_images[:2, None].float())


def test_the_cli_reports_the_refusal_in_one_line(tmp_path, capsys, trained_model):
    path = tmp_path / "big.pt"
    save_model(scaled(trained_model, 3), path, "crypto_cnn")
    assert main(["encrypted-eval", "--model", str(path), "--scheme", "mpc", "--n", "5"]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's
    assert last_line.startswith("error: fc1's outputs squared can reach")

"""Ghost clipping: the per-example norms and the clipped sum equal those of materialised per-example gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import fed_core.privacy.ghost_clip
from fed_core.models import MODELS, new_model
from fed_core.privacy.ghost_clip import GhostClipper, ghost_is_cheaper


def reference(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor):
    """Every example's full gradient by torch.func, its norm, and Opacus's clipped sum of them at the median norm."""

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()]).norm(dim=0)
    clip = norms.median().item()  # half the examples clipped, half not
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    return norms, clip, {name: torch.einsum("b,b...->...", factors, g) for name, g in grads.items()}


def double_model(name: str) -> tuple[nn.Module, dict]:
    model = new_model(name, "default", 0).double()
    return model, {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("form", ["chosen", "ghost", "materialised"])
def test_norms_and_clipped_sum_equal_the_materialised_ones(name, form, monkeypatch):
    if form != "chosen":  # every layer in one form, so both are checked on every layer type
        monkeypatch.setattr(fed_core.privacy.ghost_clip, "ghost_is_cheaper", lambda *_: form == "ghost")
    torch.manual_seed(1)
    model, params = double_model(name)
    x, y = torch.randn(24, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (24,))
    want_norms, clip, want_sum = reference(model, params, x, y)
    got_sum, got_norms = GhostClipper(model, chunk_bytes=2**20).clipped_sum(params, x, y, clip)
    torch.testing.assert_close(got_norms, want_norms, rtol=1e-5, atol=0)
    for key, want in want_sum.items():
        torch.testing.assert_close(got_sum[key], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("form", ["ghost", "materialised"])
def test_padded_strided_and_dilated_convolutions(dilation, form, monkeypatch):
    monkeypatch.setattr(fed_core.privacy.ghost_clip, "ghost_is_cheaper", lambda *_: form == "ghost")
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 4, stride=2, padding=(1, 2), dilation=dilation),
        nn.Tanh(),
        nn.Conv2d(3, 5, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.LazyLinear(10),
    ).double()
    x, y = torch.randn(9, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (9,))
    model(x)  # materialise the lazy layer
    params = {name: p.detach() for name, p in model.named_parameters()}
    want_norms, clip, want_sum = reference(model, params, x, y)
    got_sum, got_norms = GhostClipper(model).clipped_sum(params, x, y, clip)
    torch.testing.assert_close(got_norms, want_norms, rtol=1e-5, atol=0)
    for key, want in want_sum.items():
        torch.testing.assert_close(got_sum[key], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_chunks_add_up_to_the_whole_batch():
    model, params = double_model("crypto_cnn")
    x, y = torch.randn(50, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (50,))
    whole, whole_norms = GhostClipper(model).clipped_sum(params, x, y, 1.0)
    small = GhostClipper(model, chunk_bytes=1)  # one example a chunk
    assert small.chunk == 1
    parts, part_norms = small.clipped_sum(params, x, y, 1.0)
    torch.testing.assert_close(part_norms, whole_norms)
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key])


def test_the_cheaper_form_is_chosen_per_layer():
    assert ghost_is_cheaper(1, 512, 128)  # a linear layer: ||a||^2 ||g||^2
    assert not ghost_is_cheaper(64, 49, 8)  # crypto_cnn's convolution: 64 positions, 7x7 kernel, 8 channels
    assert ghost_is_cheaper(16, 4096, 512)  # few positions, a big kernel: the Gram matrices are smaller


def test_a_parameter_outside_linear_and_conv_layers_is_refused():
    """A layer whose per-example norm is not computed would escape the clipping: refuse it, do not skip it."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ValueError, match=r"1\.weight"):
        GhostClipper(model)
    with pytest.raises(ValueError, match="grouped"):
        GhostClipper(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("form", ["ghost", "materialised"])
def test_a_group_of_copies_is_clipped_as_one_example_with_their_mean_gradient(name, form, monkeypatch):
    """Augmentation multiplicity: k rows per example, the mean of their gradients clipped once."""
    monkeypatch.setattr(fed_core.privacy.ghost_clip, "ghost_is_cheaper", lambda *_: form == "ghost")
    torch.manual_seed(3)
    model, params = double_model(name)
    k, b = 3, 8
    x, y = torch.randn(b * k, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (b,)).repeat_interleave(k)

    def mean_loss(p, xs, ys):
        return F.cross_entropy(functional_call(model, p, (xs,)), ys)

    grads = vmap(grad(mean_loss), in_dims=(None, 0, 0))(params, x.view(b, k, 1, 28, 28), y.view(b, k))
    want_norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()]).norm(dim=0)
    clip = want_norms.median().item()
    factors = (clip / (want_norms + 1e-6)).clamp(max=1.0)
    got_sum, got_norms = GhostClipper(model, chunk_bytes=2**20).clipped_sum(params, x, y, clip, group=k)
    torch.testing.assert_close(got_norms, want_norms, rtol=1e-5, atol=0)
    for key, g in grads.items():
        want = torch.einsum("b,b...->...", factors, g)
        torch.testing.assert_close(got_sum[key], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with pytest.raises(ValueError, match="whole groups"):
        GhostClipper(model).clipped_sum(params, x[:-1], y[:-1], clip, group=k)

"""DP-SGD's clipped gradient sum without a per-example gradient for every layer.

DP-SGD needs each example's gradient only for its norm. For a layer computing
``out = W a`` at T positions (T = 1 for a linear layer on a flat input, the output
pixels for a convolution), example i's weight gradient is ``G_i = sum_t g_it a_it^T``,
where a are the layer's (unfolded) inputs and g the gradients of example i's loss
with respect to the layer's outputs. Its squared norm has two forms:

* materialised: build G_i ([p, d]) and sum its squares: b*T*d*p multiply-adds;
* ghost (Li et al. 2022, "Large language models can be strong differentially private
  learners"; Bu et al. 2023): ``||G_i||^2 = <A_i A_i^T, G_i G_i^T>`` from the two
  T x T Gram matrices: b*T^2*(d+p). For T = 1 it is ``||a_i||^2 ||g_i||^2``.

Each layer takes the cheaper form (:func:`ghost_is_cheaper`). On MNIST's models the
linear layers take the ghost form and the convolutions the materialised one (their
output maps are large next to their kernels: crypto_cnn's 64 positions vs 49 x 8).

The clipped sum needs no second backward pass either ("book-keeping", Bu et al. 2023):
the backward pass of the loss weighted by the clip factors c_i would reach each layer
with output gradients ``c_i g_i``, so its weight gradient is ``sum_i c_i G_i``, one
matrix product of the stored activations and output gradients. The factors are
Opacus's, ``min(1, S / (||grad_i|| + 1e-6))``, so the result equals Opacus's clipped sum.

One forward and one backward pass (to the layer outputs only; autograd skips the weight
gradients nobody asks for) therefore give both the norms and the clipped sum. The
examples are processed a chunk at a time, sized to a memory budget: every quantity is a
sum over examples, so chunks add up exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
ClippedSum = Callable[[torch.Tensor], torch.Tensor]  # clip factors [b] -> sum_i c_i G_i
# Activations, output gradients and per-example gradients of one chunk of examples.
CHUNK_BYTES = 64 * 2**20


@dataclass
class _Capture:
    """One layer's input and output of the current forward pass."""

    inputs: torch.Tensor | None = None
    output: torch.Tensor | None = None


def ghost_is_cheaper(positions: int, fan_in: int, fan_out: int) -> bool:
    """Multiply-adds per example: two T x T Gram matrices, T^2 (d + p), vs building G_i, T d p."""
    return positions * (fan_in + fan_out) < fan_in * fan_out


def _windows(layer: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    """[b, C, H, W] -> [b, T, C*kh*kw]: the windows the convolution reads, in its weight's (C, kh, kw) order.

    Tensor.unfold views plus one copy: 3x faster on CPU than F.unfold (im2col), which is
    kept for dilated convolutions only.
    """
    if layer.dilation != (1, 1):
        return F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride).transpose(1, 2)
    (ph, pw), (kh, kw), (sh, sw) = layer.padding, layer.kernel_size, layer.stride
    padded = F.pad(inputs, (pw, pw, ph, ph)) if ph or pw else inputs
    views = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # [b, C, OH, OW, kh, kw]
    b, channels, out_h, out_w = views.shape[:4]
    return views.permute(0, 2, 3, 1, 4, 5).reshape(b, out_h * out_w, channels * kh * kw)


def _conv_example_grads(layer: nn.Conv2d, inputs: torch.Tensor, out_grad: torch.Tensor) -> torch.Tensor:
    """Every example's weight gradient [b, p, C*kh*kw], as one grouped convolution (Opacus's alternative form).

    Example i's gradient is its input correlated with its output gradient: a convolution
    with the images as channels (groups = b) and the output gradients as kernels, the
    layer's stride and dilation swapped. On MNIST's layers 1.2-2.8x faster than unfolding.
    """
    b, channels = inputs.shape[:2]
    fan_out, (kh, kw) = out_grad.shape[1], layer.kernel_size
    kernels = out_grad.reshape(b * fan_out, 1, *out_grad.shape[2:])
    grads = F.conv2d(
        inputs.transpose(0, 1), kernels, stride=layer.dilation, padding=layer.padding, dilation=layer.stride, groups=b
    )
    grads = grads[..., :kh, :kw].reshape(channels, b, fan_out, kh * kw)
    return grads.permute(1, 2, 0, 3).reshape(b, fan_out, channels * kh * kw)


def _materialised(per_example: torch.Tensor) -> tuple[torch.Tensor, ClippedSum]:
    return per_example.square().sum((1, 2)), lambda c: torch.einsum("b,bpd->pd", c, per_example)


def _ghost(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ClippedSum]:
    """From a [b, T, d] and g [b, T, p]: <A A^T, G G^T> per example, and sum_i c_i G_i as one product."""
    norms = (a @ a.transpose(1, 2)).mul_(g @ g.transpose(1, 2)).sum((1, 2))
    return norms, lambda c: (g * c[:, None, None]).flatten(0, 1).T @ a.flatten(0, 1)


def _weight_terms(
    layer: nn.Module, inputs: torch.Tensor, out_grad: torch.Tensor, group: int = 1
) -> tuple[torch.Tensor, ClippedSum]:
    """Squared per-example weight-gradient norms [b], and a function of the clip factors giving sum_i c_i G_i.

    An example is ``group`` consecutive rows (its augmented copies): its gradient is the sum of
    theirs, as if one input had ``group`` times the positions.
    """
    b, fan_out = len(inputs) // group, out_grad.shape[1]
    if isinstance(layer, nn.Conv2d):
        positions, fan_in = group * out_grad[0, 0].numel(), layer.weight[0].numel()
        if not ghost_is_cheaper(positions, fan_in, fan_out):
            rows = _conv_example_grads(layer, inputs, out_grad)
            return _materialised(rows.view(b, group, *rows.shape[1:]).sum(1))
        windows = _windows(layer, inputs)
        return _ghost(
            windows.reshape(b, -1, windows.shape[-1]), out_grad.flatten(2).transpose(1, 2).reshape(b, -1, fan_out)
        )
    a, g = inputs.reshape(b, -1, inputs.shape[-1]), out_grad.reshape(b, -1, out_grad.shape[-1])
    if a.shape[1] == 1:  # a linear layer on a flat input: ||a_i||^2 ||g_i||^2, sum_i c_i g_i a_i^T
        a, g = a[:, 0], g[:, 0]
        return a.square().sum(1) * g.square().sum(1), lambda c: (g * c[:, None]).T @ a
    if ghost_is_cheaper(a.shape[1], a.shape[2], g.shape[2]):
        return _ghost(a, g)
    return _materialised(g.transpose(1, 2) @ a)


def _bias_terms(layer: nn.Module, out_grad: torch.Tensor, group: int = 1) -> torch.Tensor:
    """Per-example bias gradients [b, p]: the output gradients summed over positions (and a group's rows)."""
    rows = (
        out_grad.sum((2, 3))
        if isinstance(layer, nn.Conv2d)
        else out_grad.reshape(len(out_grad), -1, out_grad.shape[-1]).sum(1)
    )
    return rows.view(-1, group, rows.shape[-1]).sum(1)


class GhostClipper:
    """Per-example gradient norms and the clipped gradient sum of a model's Linear and Conv2d layers.

    Works on a private copy of the model, so its hooks never see another pass (the
    trainer's vmapped forward, the evaluator) and two clippers may run side by side.
    Every parameter must belong to a Linear or an ungrouped Conv2d (the three models in
    models.py): a layer it could not account for would escape the clipping.
    """

    def __init__(self, model: nn.Module, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.model = copy.deepcopy(model)
        self.layers: dict[str, nn.Module] = {}
        for name, layer in self.model.named_modules():
            if isinstance(layer, nn.Conv2d) and (
                layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
            ):
                raise ValueError(f"Layer {name}: grouped convolutions and non-zero or named padding are not supported.")
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                self.layers[name] = layer
        covered = {f"{n}.{p}" for n, layer in self.layers.items() for p, _ in layer.named_parameters()}
        uncovered = [name for name, _ in self.model.named_parameters() if name not in covered]
        if uncovered:
            raise ValueError(f"No per-example norm for parameters {uncovered}: only Linear and Conv2d are supported.")
        self.captures = {name: _Capture() for name in self.layers}
        for name, layer in self.layers.items():
            layer.register_forward_hook(self._hook(self.captures[name]))
        self.chunk = max(1, chunk_bytes // self._bytes_per_example())

    @staticmethod
    def _hook(capture: _Capture):
        def hook(_layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            capture.inputs, capture.output = inputs[0], output

        return hook

    def _bytes_per_example(self) -> int:
        """Float32 bytes one example holds in a chunk: activations, their gradients, unfolded windows, G_i or Grams."""
        with torch.no_grad():
            self.model(torch.zeros(1, 1, 28, 28, dtype=next(self.model.parameters()).dtype))
        floats = 0
        for name, layer in self.layers.items():
            capture = self.captures[name]
            fan_in, fan_out = layer.weight[0].numel(), layer.weight.shape[0]
            positions = capture.output.numel() // fan_out
            if positions == 1:
                extra = 0  # ||a||^2 ||g||^2: nothing per example beyond the activations
            elif ghost_is_cheaper(positions, fan_in, fan_out):
                extra = positions * (fan_in + 2 * positions)  # unfolded windows and two Gram matrices
            else:
                extra = fan_in * fan_out  # G_i
            floats += capture.inputs.numel() + 2 * capture.output.numel() + extra
        self._release()
        return 4 * 2 * floats  # x2: the autograd graph keeps about as much again

    def _release(self) -> None:
        for capture in self.captures.values():
            capture.inputs = capture.output = None

    def clipped_sum(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, clip: float, group: int = 1
    ) -> tuple[Params, torch.Tensor]:
        """Sum over the examples (x [b, 1, 28, 28], labels y [b]) of each gradient clipped to norm ``clip``.

        With ``group`` k > 1, each k consecutive rows are one example (k augmented copies of it,
        De et al. 2022's augmentation multiplicity): its gradient is the mean of theirs, clipped once.
        Returns the sum (same names and shapes as ``params``) and the unclipped per-example norms [b / k].
        """
        if len(x) % group:
            raise ValueError(f"{len(x)} rows are not whole groups of {group}.")
        total = {name: torch.zeros_like(p) for name, p in params.items()}
        norms = [x.new_zeros(0)]
        chunk = group * max(1, self.chunk // group)
        for start in range(0, len(x), chunk):
            part = slice(start, start + chunk)
            norms.append(self._add_chunk(total, params, x[part], y[part], clip, group))
        return total, torch.cat(norms)

    def _add_chunk(
        self, total: Params, params: Params, x: torch.Tensor, y: torch.Tensor, clip: float, group: int
    ) -> torch.Tensor:
        leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
        try:
            losses = F.cross_entropy(functional_call(self.model, leaves, (x,)), y, reduction="none")
            names = list(self.layers)
            outputs = [self.captures[n].output for n in names]
            # Gradients of the summed loss at each layer's output are each row's own (no cross-example layer);
            # divided by the group, a group's rows add up to the gradient of its mean loss.
            out_grads = torch.autograd.grad(losses.sum() / group, outputs)
            squared = x.new_zeros(len(x) // group)
            sums = []
            for name, out_grad in zip(names, out_grads):
                layer, inputs = self.layers[name], self.captures[name].inputs.detach()
                weight_sq, weight_sum = _weight_terms(layer, inputs, out_grad, group)
                bias = _bias_terms(layer, out_grad, group) if layer.bias is not None else None
                squared += weight_sq if bias is None else weight_sq + bias.square().sum(1)
                sums.append((name, layer, weight_sum, bias))
        finally:
            self._release()
        norms = squared.sqrt()
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        for name, layer, weight_sum, bias in sums:
            total[f"{name}.weight"] += weight_sum(factors).view_as(layer.weight)
            if bias is not None:
                total[f"{name}.bias"] += factors @ bias
        return norms

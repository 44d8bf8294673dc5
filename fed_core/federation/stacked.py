"""Logits of K workers' models at once, from their stacked parameters ([K, ...] per tensor), in plain tensor ops.

The trainer differentiates the sum of the workers' losses with ordinary autograd: a worker's loss depends on its
own slice of each stacked tensor only, so the gradient of the sum, slice by slice, is each worker's own gradient.
Plain autograd rather than ``torch.func.vmap(grad(...))``, for memory and time: torch.func's first gradient
imports ``torch._dynamo`` (and sympy with it), 156 MB resident that a training process then keeps, and the crypto
CNN's explicit pass below is faster than the vmapped one (``python bench/bench_train.py --only stacked`` prints both).

- crypto_cnn: the convolution of all workers is one grouped convolution (groups = K), the linear layers batched
  matrix products.
- the pooling CNNs: grouped convolutions over channels-last input (oneDNN's grouped convolution and max-pooling are
  several times faster on it than on NCHW), the linear layers one worker at a time (a batched matmul over workers
  is slower there than one matmul each).
- any other model: each worker's module call in turn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fed_core.models import CryptoCNN, PoolingCNN
from fed_core.vocabulary import Params


def stacked_logits(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``model``'s forward for K workers at once: x [K, B, 1, 28, 28] -> logits [K, B, 10]."""
    if isinstance(model, CryptoCNN):
        return _crypto_logits(model, params, x)
    if isinstance(model, PoolingCNN):
        return _pooling_logits(model, params, x)
    return torch.stack([functional_call(model, worker, (xi,)) for worker, xi in zip(_workers(params), x)])


def _crypto_logits(model: CryptoCNN, params: Params, x: torch.Tensor) -> torch.Tensor:
    h = _grouped_conv(params, "conv", _side_by_side(x), stride=model.conv.stride)
    h = _per_worker_rows(h * h, len(x))
    h = torch.baddbmm(params["fc1.bias"].unsqueeze(1), h, params["fc1.weight"].transpose(1, 2))
    return torch.baddbmm(params["fc2.bias"].unsqueeze(1), h * h, params["fc2.weight"].transpose(1, 2))


def _pooling_logits(model: PoolingCNN, params: Params, x: torch.Tensor) -> torch.Tensor:
    h = _side_by_side(x).contiguous(memory_format=torch.channels_last)
    for name in ("conv1", "conv2"):
        h = F.max_pool2d(F.relu(_grouped_conv(params, name, h, padding=getattr(model, name).padding)), 2)
    h = _per_worker_rows(h, len(x))
    # unbind, not indexing: its backward stacks the K slices once instead of scattering each into a zero tensor.
    w1, b1, w2, b2 = (params[name].unbind() for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    return torch.stack([F.linear(F.relu(F.linear(h[i], w1[i], b1[i])), w2[i], b2[i]) for i in range(len(x))])


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """[K, B, C, H, W] -> [B, K * C, H, W]: each worker's channels next to the others', for a grouped convolution."""
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


def _grouped_conv(params: Params, name: str, h: torch.Tensor, **options: object) -> torch.Tensor:
    weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
    return F.conv2d(h, weight.flatten(0, 1), bias.flatten(), groups=len(weight), **options)


def _per_worker_rows(h: torch.Tensor, k: int) -> torch.Tensor:
    """[B, K * C, H, W] -> [K, B, C * H * W]: each worker's features, flattened as its module flattens them."""
    return h.reshape(h.shape[0], k, -1).transpose(0, 1)


def _workers(params: Params) -> list[Params]:
    return [dict(zip(params, row)) for row in zip(*(p.unbind() for p in params.values()))]

"""CryptoCNN as the secure protocol sees it: its ops, its steps and its parameters' layout.

Shared by the compute parties (who run the steps on shares), the dealer (who runs them on
shapes, to deal the right triples) and the range check (which runs them on intervals).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from fed_core.models import CryptoCNN, im2col

BilinearOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Value = TypeVar("Value")


def conv_op(kernel: int, stride: int) -> BilinearOp:
    """images [N,1,H,W] x weights [C, k*k] -> [N, C*windows] in torch's (C, H, W) flatten order."""

    def conv(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (im2col(images, kernel, stride) @ weights.T).transpose(1, 2).flatten(1)

    return conv


def linear_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x @ weight.T


WEIGHTS = ("conv", "fc1", "fc2")


def squared(name: str) -> str:
    """The name of the step that squares layer ``name``'s output."""
    return f"{name} squared"


def crypto_cnn(x: Value, layer: Callable[[Value, str], Value], square: Callable[[Value, str], Value]) -> Value:
    """CryptoCNN's steps, written once: on shares, on shapes (the dealer) or on intervals (the range check).

    ``layer(x, name)`` applies the weights called ``name`` and their bias; ``square(x, name)``
    squares the output of that layer.
    """
    x = square(layer(x, "conv"), "conv")
    x = square(layer(x, "fc1"), "fc1")
    return layer(x, "fc2")


@dataclass(frozen=True)
class Architecture:
    """What every party, the dealer included, knows of the model: shapes and ops, no values."""

    shapes: dict[str, torch.Size]  # of the weights and biases, by name (``model_parameters``)
    kernel: int
    stride: int

    @classmethod
    def of(cls, model: CryptoCNN) -> Architecture:
        shapes = {name: p.shape for name, p in model_parameters(model).items()}
        return cls(shapes, model.conv.kernel_size[0], model.conv.stride[0])

    def op(self, name: str) -> BilinearOp:
        return conv_op(self.kernel, self.stride) if name == "conv" else linear_op


def model_parameters(model: CryptoCNN) -> dict[str, torch.Tensor]:
    """CryptoCNN's weights and biases by name, in the layout the protocol computes with."""
    positions = model.fc1.in_features // model.conv.out_channels
    return {
        "conv": model.conv.weight.flatten(1),
        # One bias per output position, in the conv output's (channel, position) order.
        "conv_bias": model.conv.bias.repeat_interleave(positions),
        "fc1": model.fc1.weight,
        "fc1_bias": model.fc1.bias,
        "fc2": model.fc2.weight,
        "fc2_bias": model.fc2.bias,
    }

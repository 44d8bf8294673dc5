"""The models a federation can train, how they are initialised, and the saved-model format.

``crypto_cnn`` is the default because it is the one the encrypted pages can run:
one strided convolution and square activations (a polynomial of degree 2 per
layer) are what secret sharing and CKKS evaluate cheaply and exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn


class CryptoCNN(nn.Module):
    """Conv 8x7x7 stride 3 -> square -> 512->128 -> square -> 128->10 (TenSEAL's MNIST design, wider)."""

    def __init__(self, channels: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=7, stride=3)
        self.fc1 = nn.Linear(channels * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * x
        x = self.fc1(x.flatten(1))
        x = x * x
        return self.fc2(x)


@dataclass(frozen=True)
class Quadratic:
    """The activation a x^2 + b x + c (a != 0); the default is CryptoCNN's plain square."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0

    def __post_init__(self) -> None:
        if self.a == 0:
            raise ValueError("A quadratic activation needs a != 0 (a x + c would make the network linear).")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * (x * x) + self.b * x + self.c

    def as_square(self) -> tuple[float, float]:
        """(h, k) with a x^2 + b x + c = a (x + h)^2 + k."""
        return self.b / (2 * self.a), self.c - self.b**2 / (4 * self.a)


class FoldableCryptoCNN(nn.Module):
    """CryptoCNN's function, parametrised for training: it exports exactly as a CryptoCNN (:meth:`fold`).

    Changes of parametrisation, all folded away on export, so MPC and CKKS run the result
    unchanged:

    * ``activation``: any quadratic a x^2 + b x + c = a (x + h)^2 + k, so the shift h joins
      the bias of the layer before, the factor a the weights of the layer after, and the
      constant k (times those weights) that layer's bias;
    * ``input_scale`` s: the convolution reads s times the image (no padding: its weights
      times s are the exported ones);
    * ``rank`` r > 0: fc1 as a product of a 512 -> r and an r -> 128 layer, whose product is
      fc1's weight.

    None changes what the network can compute (rank aside); they change the scale of each
    layer's gradients and how many parameters there are, hence how DP-SGD's per-example
    clipping and its fixed noise fall on the model: a layer whose weights are used times s
    gets gradients s times larger, so after clipping its steps grow as s^2 and its noise only
    as s.
    """

    def __init__(
        self,
        activation: Quadratic,
        rank: int = 0,
        input_scale: float = 1.0,
        channels: int = 8,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.input_scale = input_scale
        self.conv = nn.Conv2d(1, channels, kernel_size=7, stride=3)
        width = channels * 8 * 8
        self.fc1 = (
            nn.Linear(width, hidden)
            if rank == 0
            else nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, hidden))
        )
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.conv(self.input_scale * x))
        x = self.activation(self.fc1(x.flatten(1)))
        return self.fc2(x)

    @torch.no_grad()
    def fold(self) -> CryptoCNN:
        """The CryptoCNN computing the same function (computed in float64, stored in float32)."""
        h, k = self.activation.as_square()
        conv_w, conv_b = self.input_scale * self.conv.weight.double(), self.conv.bias.double()
        if isinstance(self.fc1, nn.Linear):
            fc1_w, fc1_b = self.fc1.weight.double(), self.fc1.bias.double()
        else:
            fc1_w, fc1_b = self.fc1[1].weight.double() @ self.fc1[0].weight.double(), self.fc1[1].bias.double()
        fc2_w, fc2_b = self.fc2.weight.double(), self.fc2.bias.double()
        a = self.activation.a
        folded = CryptoCNN(self.conv.out_channels, self.fc2.in_features)
        folded.conv.weight.copy_(conv_w)
        folded.conv.bias.copy_(conv_b + h)
        folded.fc1.weight.copy_(a * fc1_w)
        folded.fc1.bias.copy_(fc1_b + k * fc1_w.sum(1) + h)
        folded.fc2.weight.copy_(a * fc2_w)
        folded.fc2.bias.copy_(fc2_b + k * fc2_w.sum(1))
        return folded


class PoolingCNN(nn.Module):
    """Two 5x5 conv + ReLU + 2x2 max-pool blocks, then two linear layers; plaintext only."""

    def __init__(self, channels: tuple[int, int], padding: int, hidden: int) -> None:
        super().__init__()
        side = ((28 - 4 + 2 * padding) // 2 - 4 + 2 * padding) // 2
        self.conv1 = nn.Conv2d(1, channels[0], 5, padding=padding)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding=padding)
        self.fc1 = nn.Linear(side * side * channels[1], hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class TanhCNN(nn.Module):
    """The end-to-end MNIST CNN of the DP papers (Papernot et al. 2021; Tramer & Boneh 2021); plaintext only.

    Conv 16x8x8 stride 2 pad 2 -> tanh -> max-pool 2 stride 1 -> conv 32x4x4 stride 2 -> tanh
    -> max-pool 2 stride 1 -> 512->32 -> tanh -> 32->10 (26k parameters), as in their code
    (github.com/ftramer/Handcrafted-DP, models.py MNIST_CNN). Tanh, a tempered sigmoid, keeps
    activations bounded, so clipped gradients lose less signal than with ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=8, stride=2, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=4, stride=2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2, stride=1)  # 28 -> 13 -> 12
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2, stride=1)  # 12 -> 5 -> 4
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def relu_cnn() -> PoolingCNN:
    """The classic CNN of the PySyft MNIST tutorials (431k parameters)."""
    return PoolingCNN((20, 50), padding=0, hidden=500)


def fedavg_cnn() -> PoolingCNN:
    """The CNN of McMahan et al. 2017 (32 and 64 channels, 512 hidden, 1.66M parameters)."""
    return PoolingCNN((32, 64), padding=2, hidden=512)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "crypto_cnn": CryptoCNN,
    "relu_cnn": relu_cnn,
    "fedavg_cnn": fedavg_cnn,
    "tanh_cnn": TanhCNN,
}
MODEL_LABELS = {
    "crypto_cnn": "Crypto-friendly CNN (square activations, encryptable)",
    "relu_cnn": "ReLU CNN of the PySyft tutorials (plaintext only)",
    "fedavg_cnn": "CNN of the FedAvg paper (plaintext only)",
    "tanh_cnn": "Tempered-sigmoid CNN of the DP papers (tanh; plaintext only)",
}
# Polynomial activations only: what MPC and CKKS can evaluate.
ENCRYPTABLE_MODELS = tuple(name for name, make in MODELS.items() if make is CryptoCNN)
INIT_METHODS = ("default", "kaiming", "xavier", "uniform")


def im2col(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """[N, 1, H, W] -> [N, windows, kernel*kernel]: the windows a convolution reads, as rows (any dtype).

    Both encrypted schemes run CryptoCNN's convolution as a product with these rows.
    """
    patches = images[:, 0].unfold(1, kernel, stride).unfold(2, kernel, stride)
    return patches.reshape(images.shape[0], -1, kernel * kernel)


def is_encryptable(model: nn.Module) -> bool:
    return isinstance(model, CryptoCNN)


def build_model(name: str) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    model = MODELS[name]()
    model.model_name = name
    return model


def init_weights(model: nn.Module, method: str, generator: torch.Generator) -> None:
    """Re-initialise every conv/linear layer in place; 'default' keeps PyTorch's own init."""
    if method not in INIT_METHODS:
        raise ValueError(f"Unknown init {method!r}; choose one of {', '.join(INIT_METHODS)}.")
    for layer in model.modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        if method == "default":
            bound = 1.0 / layer.weight[0].numel() ** 0.5  # PyTorch's rule, but drawn from our generator
            layer.weight.data.uniform_(-bound, bound, generator=generator)
            if layer.bias is not None:
                layer.bias.data.uniform_(-bound, bound, generator=generator)
            continue
        if method == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        elif method == "xavier":
            nn.init.xavier_uniform_(layer.weight, generator=generator)
        else:
            nn.init.uniform_(layer.weight, -0.05, 0.05, generator=generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def new_model(name: str, init: str, seed: int) -> nn.Module:
    model = build_model(name)
    init_weights(model, init, torch.Generator().manual_seed(seed))
    return model


def save_model(model: nn.Module, path: Path | str | BinaryIO, name: str, meta: dict | None = None) -> None:
    torch.save({"model": name, "state_dict": model.state_dict(), "meta": meta or {}}, path)


def load_model(path: Path | str | BinaryIO) -> tuple[nn.Module, dict]:
    """Load a file written by :func:`save_model`; returns the model (eval mode) and its metadata."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports a non-PyTorch file with whatever its unpickler tripped on
        raise ValueError(f"{path} is not a model file saved by fed_core: it is not a PyTorch file.") from exc
    if not isinstance(saved, dict) or not {"model", "state_dict"} <= saved.keys():
        raise ValueError(f"{path} is a PyTorch file, but not a model saved by fed_core (no model name and weights).")
    model = build_model(saved["model"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: its weights do not fit the {saved['model']} model.") from exc
    model.eval()
    return model, {"model": saved["model"], **saved.get("meta", {})}

"""FedAvg (McMahan et al. 2017) and, with server momentum, FedAvgM (Hsu et al. 2019).

Workers minimise their own loss; the server averages their updates weighted by examples (:func:`fedavg`) and
applies the average by SGD with momentum on the pseudo-gradient ``-average``: server_lr = 1 and momentum 0 make
the global model the weighted mean of the local models.
"""

from __future__ import annotations

import torch

from fed_core.federation.strategies.base import RunSettings, Strategy


def fedavg(deltas: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """Average of the workers' updates [K, P], weighted by how many examples each one trained on."""
    weights = num_examples.to(deltas.dtype) / num_examples.sum()
    return weights @ deltas


class FedAvg(Strategy):
    """SGD with momentum on the server: velocity = momentum * velocity + average; x = x + server_lr * velocity."""

    label = "FedAvg (server momentum > 0: FedAvgM)"

    def __init__(self, config: RunSettings) -> None:
        super().__init__(config)
        self.momentum = config.server_momentum
        self.state = 0.0  # the velocity: zero before the first round, so the first step is the average itself

    def server_update(self, global_vector: torch.Tensor, average: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        velocity = self.momentum * self.state + average
        return global_vector + self.server_lr * velocity, velocity

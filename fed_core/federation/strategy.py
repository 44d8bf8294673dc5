"""Server side math: FedAvg weighting, the server optimizer, and each worker's contribution.

The strategies a run can use (``TrainConfig.strategy``):

* ``fedavg``: workers minimise their own loss; the server averages the updates and applies the
  average with :class:`ServerOptimizer` (server momentum > 0 makes it FedAvgM);
* ``fedprox`` (Li et al. 2020): the same, but each worker's objective adds mu/2 ||w - w_global||^2,
  which keeps local models near the global one on non-IID data (client.BatchedTrainer);
* ``scaffold`` (Karimireddy et al. 2020): control variates correct every local step for the
  worker's drift (scaffold.py); the model update is applied as in FedAvg.
"""

from __future__ import annotations

import torch

STRATEGIES = {
    "fedavg": "FedAvg (server momentum > 0: FedAvgM)",
    "fedprox": "FedProx (proximal term mu/2 ||w - w_global||^2)",
    "scaffold": "SCAFFOLD (control variates)",
}


def fedavg(deltas: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """Average of the workers' updates [K, P], weighted by how many examples each one trained on."""
    weights = num_examples.to(deltas.dtype) / num_examples.sum()
    return weights @ deltas


class ServerOptimizer:
    """SGD with momentum on the pseudo-gradient ``-average_update``.

    lr=1, momentum=0 is plain FedAvg (the global model becomes the weighted mean
    of the local models); momentum > 0 is FedAvgM (Hsu et al. 2019).
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum
        self.velocity: torch.Tensor | None = None

    def propose(self, global_vector: torch.Tensor, average_update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next global model and velocity, without committing them (used for leave-one-out)."""
        velocity = average_update if self.velocity is None else self.momentum * self.velocity + average_update
        return global_vector + self.lr * velocity, velocity

    def step(self, global_vector: torch.Tensor, average_update: torch.Tensor) -> torch.Tensor:
        new_vector, self.velocity = self.propose(global_vector, average_update)
        return new_vector


def cosine_to(deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each update [K, P] to ``reference`` [P], without a [K, P] temporary."""
    norms = deltas.norm(dim=1).clamp(min=1e-8) * reference.norm().clamp(min=1e-8)
    return (deltas @ reference) / norms

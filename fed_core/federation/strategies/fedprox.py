"""FedProx (Li et al. 2020): each worker's objective adds mu/2 ||w - w_global||^2.

The proximal term keeps local models near the global one on non-IID data; the trainer adds its gradient
mu (w - w_global) to every step (federation.trainer.BatchedTrainer). The server side is FedAvg's.
"""

from __future__ import annotations

from dataclasses import replace

from fed_core.federation.strategies.base import RunSettings
from fed_core.federation.strategies.fedavg import FedAvg
from fed_core.vocabulary import LocalSettings


class FedProx(FedAvg):
    label = "FedProx (proximal term mu/2 ||w - w_global||^2)"
    local_cost = 1.1  # the proximal gradient: one model-sized add per local step

    def __init__(self, config: RunSettings) -> None:
        super().__init__(config)
        self.mu = config.prox_mu

    def local_settings(self, settings: LocalSettings) -> LocalSettings:
        """The workers' settings with the proximal weight mu: it is what FedProx sends beside the model."""
        return replace(settings, prox_mu=self.mu)

"""FedAdam (Reddi et al. 2021): Adam on the server, the round's average update as its pseudo-gradient."""

from __future__ import annotations

import torch

from fed_core.federation.strategies.base import BETA_2, FedOpt


class FedAdam(FedOpt):
    label = "FedAdam (adaptive server optimizer)"

    @staticmethod
    def second_moment(v: torch.Tensor | float, squared: torch.Tensor) -> torch.Tensor:
        """Adam's: v = BETA_2 v + (1 - BETA_2) Δ², an exponential average of the squared updates."""
        return BETA_2 * v + (1 - BETA_2) * squared

"""FedYogi (Reddi et al. 2021): Yogi on the server, the round's average update as its pseudo-gradient."""

from __future__ import annotations

import torch

from fed_core.federation.strategies.base import BETA_2, FedOpt


class FedYogi(FedOpt):
    label = "FedYogi (adaptive server optimizer)"

    @staticmethod
    def second_moment(v: torch.Tensor | float, squared: torch.Tensor) -> torch.Tensor:
        """Yogi's: v = v - (1 - BETA_2) Δ² sign(v - Δ²).

        v moves towards Δ² by a step of (1 - BETA_2) Δ² whatever the gap, where Adam moves by (1 - BETA_2) of the
        gap: after a run of small updates, one large update does not blow v up and freeze the step size.
        """
        return v - (1 - BETA_2) * squared * torch.sign(v - squared)

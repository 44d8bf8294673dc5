"""How the server combines a round's updates, and what it sees of each worker while it does.

* In the clear: the FedAvg average of the updates, weighted by examples (strategy.fedavg). The server sees
  every worker's update, which is what gradient inversion attacks feed on (attack.py).
* Secure aggregation (secagg.py): every sampled worker masks its update; the server holds only masked
  vectors and learns only their weighted sum. Workers that drop out after masking are recovered through
  Shamir shares; with too few survivors the round is refused and the global model stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .client import WorkerUpdate
from .config import TrainConfig
from .secagg import SecAggRefused, secure_sum
from .strategy import fedavg

FLOAT_BYTES = 4


@dataclass
class Aggregate:
    """The outcome of one round's aggregation, as the server has it."""

    average: torch.Tensor | None  # the update the server applies; None if the round was refused
    visible: torch.Tensor | None  # [K, P] each worker's update as the server received it; None if it never sees one
    counts: torch.Tensor  # [K] the examples behind each reporting worker's update
    received: torch.Tensor  # [P] what the server received from the round's first reporting worker
    upload_bytes: float  # mean bytes one sampled worker sent
    refused: str | None = None  # why no aggregate came out (secure aggregation below its threshold)


def aggregate(updates: list[WorkerUpdate], dropped: list[int], config: TrainConfig) -> Aggregate:
    """Combine the reporting workers' updates; ``dropped`` workers were sampled but never sent theirs."""
    deltas = torch.stack([u.delta for u in updates])
    counts = torch.tensor([u.num_examples for u in updates])
    if config.secure_aggregation:
        return _secure(deltas, counts, len(dropped))
    upload = deltas.shape[1] * FLOAT_BYTES + 8  # the update and its example count
    return Aggregate(fedavg(deltas, counts), deltas, counts, deltas[0], upload)


def _secure(deltas: torch.Tensor, counts: torch.Tensor, dropped: int) -> Aggregate:
    """Dropped workers took part in the key stages, then vanished before sending their masked vector."""
    rows = torch.cat([deltas, torch.zeros(dropped, deltas.shape[1])])
    lost = range(len(deltas), len(rows))
    try:
        result = secure_sum(rows, counts.tolist() + [1] * dropped, dropped_after_masking=lost)
    except SecAggRefused as exc:
        return Aggregate(None, None, counts, torch.zeros(deltas.shape[1]), 0.0, refused=str(exc))
    return Aggregate(result.average(), None, counts, result.server_view(0), float(result.bytes_per_worker().up))

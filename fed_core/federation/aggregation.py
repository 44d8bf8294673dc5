"""How the server combines a round's updates, and what it sees of each worker while it does.

Which of the ways below a run takes is its privacy object's answer (fed_core/privacy/policy.py, built from the
settings by ``privacy_for``); this module only asks it and runs the sums.

* In the clear: the FedAvg average of the updates, weighted by examples (strategies.fedavg). The server sees
  every worker's update, which is what gradient inversion attacks feed on (fed_core/attack).
* Secure aggregation (secagg.py): every sampled worker masks its update; the server holds only masked
  vectors and learns only their weighted sum. Workers that drop out after masking are recovered through
  Shamir shares; with too few survivors (fewer than three, or below the threshold) the round is refused and
  the global model stays as it was. A worker's local loss before and after training and its local accuracy
  travel in the same masked vector, as three more coordinates, so the server learns only their
  example-weighted means over the round, never one worker's. An engine that runs a protocol of its own
  (Flower's SecAgg+) hands back the same :class:`Aggregate`.
* Client-level DP (dp.py, DP-FedAvg): each worker clips its update to norm S, all weigh the same, and the
  server adds Gaussian noise to the sum (in the clear or out of secure aggregation) before dividing by the
  expected number of workers. With ``dp_distributed`` the workers add it instead, as discrete Gaussian shares
  inside secure aggregation (distributed_dp.py), and the server never sees the sum without it. Those local
  statistics are not noised, so under client-level DP they are not released at all, not even as means; under
  example-level DP each worker keeps them to itself (trainer.py).
* Example-level DP with ``dp_distributed`` is FedSGD: the workers send clipped gradient sums with noise shares
  and the server takes one central DP-SGD step with their total.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from fed_core.config import TrainConfig
from fed_core.federation.strategies import fedavg
from fed_core.privacy.policy import privacy_for
from fed_core.privacy.secagg import SecAggRefused, secure_sum
from fed_core.vocabulary import Aggregate, WorkerUpdate

FLOAT_BYTES = 4


LOCAL_STATS = ("loss_before", "loss_after", "local_accuracy")  # what a worker reports of its own training


class SecureAggregatingPool(Protocol):
    """A pool whose engine runs secure aggregation itself, and so never hands over a single update."""

    def train_aggregate(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> Aggregate: ...


def collect(
    pool, global_vector: torch.Tensor, reporting: list[int], dropped: list[int], round_idx: int, config: TrainConfig
) -> Aggregate:
    """Train the reporting workers and combine their updates as the run's privacy asks."""
    if privacy_for(config).secure_aggregation and hasattr(pool, "train_aggregate"):
        return pool.train_aggregate(global_vector, reporting, round_idx)
    return aggregate(pool.train(global_vector, reporting, round_idx), dropped, config)


def aggregate(updates: list[WorkerUpdate], dropped: list[int], config: TrainConfig) -> Aggregate:
    """Combine the reporting workers' updates; ``dropped`` workers were sampled but never sent theirs.

    The run's privacy (privacy/policy.py) bounds the updates and their weights before they are summed, says
    whether the local statistics go along, draws the noise shares of a split, and releases the applied update.
    """
    privacy = privacy_for(config)
    deltas = torch.stack([u.delta for u in updates])
    counts = torch.tensor([u.num_examples for u in updates])
    stats = torch.tensor([[u.loss_before, u.loss_after, u.accuracy_after] for u in updates])
    first_update = deltas[0]
    deltas, counts = privacy.bound(deltas, counts)
    released = stats if privacy.releases_local_stats else None  # un-noised: never released under DP
    if privacy.secure_aggregation:
        noise = privacy.noise_shares(deltas.shape[1])
        combined = _secure(deltas, counts, [u.worker for u in updates], released, len(dropped), noise)
    else:
        upload = deltas.shape[1] * FLOAT_BYTES + 8  # the update and its example count
        reports = [{"worker": u.worker, **dict(zip(LOCAL_STATS, row.tolist()))} for u, row in zip(updates, stats)]
        combined = Aggregate(fedavg(deltas, counts), reports, deltas, counts, deltas[0], None, upload)
        combined.local_means = None if released is None else _means(fedavg(released, counts))
    combined.first_update = first_update
    if combined.average is not None:
        combined.average = privacy.release(combined.average, counts.sum(), [u.num_examples for u in updates])
    return combined


def _secure(
    deltas: torch.Tensor,
    counts: torch.Tensor,
    workers: list[int],
    stats: torch.Tensor | None,
    dropped: int,
    noise: Callable[[int], np.ndarray] | None = None,
) -> Aggregate:
    """Masked sum of the updates, with the local statistics (if released) as extra coordinates of each vector.

    Dropped workers took part in the key stages, then vanished before sending their masked vector (and noise
    share). The server learns each reporting worker's id (it sent a masked vector) and nothing else of it.
    Noise shares exist only under DP, where the statistics are not released, so they always match the update.
    """
    length = deltas.shape[1]
    rows = deltas if stats is None else torch.cat([deltas, stats.float()], dim=1)
    rows = torch.cat([rows, torch.zeros(dropped, rows.shape[1])])
    lost = range(len(deltas), len(rows))
    reports = [{"worker": w, **dict.fromkeys(LOCAL_STATS, float("nan"))} for w in workers]
    try:
        result = secure_sum(rows, counts.tolist() + [1] * dropped, dropped_after_masking=lost, noise=noise)
    except SecAggRefused as exc:
        return Aggregate(None, reports, None, None, None, None, 0.0, refused=str(exc))
    upload = float(result.bytes_per_worker().up)
    average = result.average()
    means = None if stats is None else _means(result.weighted_sum[length:] / result.total_count)
    return Aggregate(
        average[:length], reports, None, None, result.server_view(0)[:length], None, upload, local_means=means
    )


def _means(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(LOCAL_STATS, values.tolist()))

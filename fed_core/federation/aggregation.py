"""How the server combines a round's updates, and what it sees of each worker while it does.

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
  example-level DP each worker keeps them to itself (client.py).
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
from fed_core.privacy.distributed_dp import NoiseSplit
from fed_core.privacy.dp import (
    ClientAccountant,
    ClientDP,
    ExampleAccountant,
    ExampleDP,
    SecureRandom,
    clip_rows,
    poisson_plan,
    private_fedavg,
)
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
    """Train the reporting workers and combine their updates as the config asks."""
    if config.secure_aggregation and hasattr(pool, "train_aggregate"):
        return pool.train_aggregate(global_vector, reporting, round_idx)
    return aggregate(pool.train(global_vector, reporting, round_idx), dropped, config)


def aggregate(updates: list[WorkerUpdate], dropped: list[int], config: TrainConfig) -> Aggregate:
    """Combine the reporting workers' updates; ``dropped`` workers were sampled but never sent theirs."""
    deltas = torch.stack([u.delta for u in updates])
    counts = torch.tensor([u.num_examples for u in updates])
    stats = torch.tensor([[u.loss_before, u.loss_after, u.accuracy_after] for u in updates])
    first_update = deltas[0]
    if config.dp == "client":  # bounded sensitivity: each update clipped to S, every worker weighs the same
        deltas, counts = clip_rows(deltas, config.dp_clip), torch.ones_like(counts)
    released = stats if config.dp == "none" else None  # un-noised: never released under DP, not even as means
    if config.dp_distributed:  # FedSGD's clipped gradient sums add up unweighted
        counts = torch.ones_like(counts)
    if config.secure_aggregation:
        noise = _noise_shares(config, deltas.shape[1])
        combined = _secure(deltas, counts, [u.worker for u in updates], released, len(dropped), noise)
    else:
        upload = deltas.shape[1] * FLOAT_BYTES + 8  # the update and its example count
        reports = [{"worker": u.worker, **dict(zip(LOCAL_STATS, row.tolist()))} for u, row in zip(updates, stats)]
        combined = Aggregate(fedavg(deltas, counts), reports, deltas, counts, deltas[0], None, upload)
        combined.local_means = None if released is None else _means(fedavg(released, counts))
    combined.first_update = first_update
    if config.dp == "example" and config.dp_distributed and combined.average is not None:
        combined.average = _central_step(combined.average * counts.sum(), updates, config)
    if config.dp == "client" and combined.average is not None:
        clipped_sum = combined.average * counts.sum()  # the sum over the survivors, each weighing 1
        expected = config.fraction * config.workers
        if config.dp_distributed:  # the workers' shares in the sum are the noise: the server adds none
            combined.average = (clipped_sum / expected).float()
        else:
            dp = ClientDP(config.dp_clip, config.dp_noise)
            combined.average = private_fedavg(clipped_sum, dp, expected, SecureRandom())
    return combined


def _noise_shares(config: TrainConfig, length: int) -> Callable[[int], np.ndarray] | None:
    """Each worker's discrete Gaussian share under the noise split (distributed_dp.py); None otherwise."""
    if not config.dp_distributed:
        return None
    dp = (ExampleDP if config.dp == "example" else ClientDP)(config.dp_clip, config.dp_noise)
    return NoiseSplit(dp, config.dp_colluding, length).sampler()


def _central_step(noisy_sum: torch.Tensor, updates: list[WorkerUpdate], config: TrainConfig) -> torch.Tensor:
    """FedSGD under the noise split: -lr * (clipped gradients + noise) / E[batch], central DP-SGD's step.

    The divisor is the expected size of the pooled Poisson batch, sum of q_k n_k over the
    reporting workers (their shard sizes are public): fixed, like the trainer's, so it
    reveals nothing about who was in the batch.
    """
    expected = sum(poisson_plan(u.num_examples, config.batch_size, 1).expected_batch for u in updates)
    return (noisy_sum * (-config.lr / expected)).float()


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


def accountant_for(config: TrainConfig) -> ExampleAccountant | ClientAccountant | None:
    """The epsilon the run's DP has spent, kept up to date after every round; None without DP."""
    if config.dp == "example":
        dp = ExampleDP(config.dp_clip, config.dp_noise)
        steps = 1 if config.dp_distributed else None  # FedSGD: one step per round
        return ExampleAccountant(dp, config.batch_size, config.local_epochs, config.dp_delta, steps)
    if config.dp == "client":
        return ClientAccountant(ClientDP(config.dp_clip, config.dp_noise), config.fraction, config.dp_delta)
    return None

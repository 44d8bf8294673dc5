"""SCAFFOLD (Karimireddy et al. 2020): control variates that correct each worker's drift on non-IID data.

The server keeps a control variate c, every worker its own c_i (zero until it first trains), each a vector
the size of the model. A sampled worker adds c - c_i to every local step (federation.trainer.BatchedTrainer),
then updates its variate with the paper's option II:

    c_i+ = c_i - c + (x - y_i) / (steps_i * lr)

where x is the global model it started from, y_i its local model after ``steps_i`` local steps. It keeps
c_i+ and sends Δc_i = c_i+ - c_i beside its model update; after the round the server adds the mean over all
N workers, (1/N) Σ Δc_i, to c. With plain local SGD, (x - y_i) / (steps_i lr) is the worker's mean corrected
step, so c_i+ is its mean (clipped) gradient. Local momentum m moves the model about 1/(1 - m) times further
per gradient, so lr is replaced by the effective step lr / (1 - m) there (exact for m = 0, an estimate
otherwise; without it the variates come out 1/(1 - m) times too large and training falls apart).

This object simulates both sides: ``server`` is the server's c, ``own(i)`` worker i's c_i, which a real
worker would keep on its own machine; :class:`ScaffoldWorkers` is the workers' side of a round. The server
side is FedAvg's otherwise. Memory: one model-sized vector per worker that has trained (100 workers of
fedavg_cnn: 660 MB).
"""

from __future__ import annotations

from typing import Protocol

import torch

from fed_core.federation.strategies.base import RunSettings
from fed_core.federation.strategies.fedavg import FedAvg
from fed_core.privacy.policy import privacy_for
from fed_core.vocabulary import WorkerUpdate


class CorrectablePool(Protocol):
    """A pool whose workers add a correction [K, P] to every local step (engines.inprocess.InProcessPool)."""

    def train(
        self, global_vector: torch.Tensor, workers: list[int], round_idx: int, corrections: torch.Tensor | None = None
    ) -> list[WorkerUpdate]: ...


class Scaffold(FedAvg):
    label = "SCAFFOLD (control variates)"
    local_cost = 1.1  # the correction: one model-sized add per local step

    def __init__(self, config: RunSettings) -> None:
        super().__init__(config)
        self.num_workers = config.workers
        self.step_size = config.lr / (1 - config.momentum)  # the workers' effective local step (docstring)
        self.server: torch.Tensor | float = 0.0  # c, zero until the first round ends
        self.variates: dict[int, torch.Tensor] = {}  # each worker's c_i, once it has trained
        self.reported = 0.0  # Σ Δc_i the workers sent this round, until after_round adds it to c

    @classmethod
    def problems(cls, config: RunSettings) -> list[str]:
        """Its control-variate updates travel in the clear, and its workers keep state between rounds."""
        out = []
        if config.engine != "inprocess":
            out.append("SCAFFOLD runs on the inprocess engine only: its workers keep control variates between rounds.")
        try:
            privacy = privacy_for(config)
        except ValueError:  # an unknown DP mode, reported with the other choices
            return out
        if privacy.secure_aggregation:
            out.append(
                "SCAFFOLD cannot run with secure aggregation: the server needs each worker's control-variate "
                "update, which secure aggregation would hide; use FedProx instead."
            )
        if privacy.differentially_private:
            out.append(
                "SCAFFOLD cannot run with differential privacy: its control variates are computed from each "
                "worker's updates and sent without clipping or noise, outside the DP guarantee; use FedProx instead."
            )
        return out

    def own(self, worker: int, like: torch.Tensor) -> torch.Tensor:
        """Worker ``worker``'s c_i (zeros shaped ``like`` before it first trains)."""
        return self.variates.get(worker, torch.zeros_like(like))

    def corrections(self, global_vector: torch.Tensor, workers: list[int]) -> torch.Tensor:
        """[K, P]: c - c_i, what each of ``workers`` adds to its every local step."""
        return torch.stack([self.server - self.own(w, global_vector) for w in workers])

    def workers(self, pool: CorrectablePool) -> ScaffoldWorkers:
        return ScaffoldWorkers(pool, self)

    def report(self, updates: list[WorkerUpdate]) -> None:
        """The workers' side after training: each keeps c_i+ from its update and reports Δc_i = c_i+ - c_i."""
        for update in updates:
            old = self.own(update.worker, update.delta)
            new = old - self.server - update.delta / (max(1, update.local_steps) * self.step_size)
            self.variates[update.worker] = new
            self.reported = self.reported + (new - old)

    def after_round(self) -> None:
        """The server's side: c += (1/N) Σ Δc_i over the round's reports, N counting every worker."""
        self.server = self.server + self.reported / self.num_workers
        self.reported = 0.0


class ScaffoldWorkers:
    """A round's training request as SCAFFOLD sends it: the global model and each worker's correction c - c_i."""

    def __init__(self, pool: CorrectablePool, strategy: Scaffold) -> None:
        self.pool = pool
        self.strategy = strategy

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]:
        corrections = self.strategy.corrections(global_vector, workers)
        updates = self.pool.train(global_vector, workers, round_idx, corrections)
        self.strategy.report(updates)
        return updates

"""The default engine: every worker in this process, all sampled workers trained together by one vmapped trainer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist
from fed_core.engines import Engine, Rounds, StopCheck
from fed_core.federation.server import FederatedRun
from fed_core.federation.trainer import BatchedTrainer, worker_seed
from fed_core.limits.budget import working_memory
from fed_core.vocabulary import WorkerUpdate


class InProcessPool:
    """The workers' shards stay in this process; a round trains the sampled ones at once.

    What a strategy sends beyond the global model comes in ``corrections`` (SCAFFOLD's c - c_i, from
    federation.strategies.scaffold); the pool keeps no strategy state of its own.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Mnist,
        shards: list[torch.Tensor],
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.trainer = BatchedTrainer(model, data.train_images, data.train_labels, config.local, working_memory(config))
        self.shards = shards
        self.seed = config.seed
        self.should_stop = should_stop

    def train(
        self, global_vector: torch.Tensor, workers: list[int], round_idx: int, corrections: torch.Tensor | None = None
    ) -> list[WorkerUpdate]:
        """Each of ``workers``' update from ``global_vector``; ``corrections`` [K, P] is added to their every step."""
        seeds = [worker_seed(self.seed, round_idx, w) for w in workers]
        shards = [self.shards[w] for w in workers]
        return self.trainer.train(global_vector, workers, shards, seeds, self.should_stop, corrections)


class InProcessEngine(Engine):
    def host(self, rounds: Rounds, should_stop: StopCheck) -> FederatedRun:
        return rounds(InProcessPool)

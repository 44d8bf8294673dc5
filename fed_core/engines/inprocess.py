"""The default engine: every worker in this process, all sampled workers trained together by one vmapped trainer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fed_core.client import BatchedTrainer, WorkerUpdate, worker_seed
from fed_core.config import TrainConfig
from fed_core.data import Mnist
from fed_core.engines import Engine, Rounds, StopCheck
from fed_core.server import FederatedRun


class InProcessPool:
    """The workers' shards stay in this process; a round trains the sampled ones at once."""

    def __init__(
        self,
        model: nn.Module,
        data: Mnist,
        shards: list[torch.Tensor],
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.trainer = BatchedTrainer(model, data.train_images, data.train_labels, config.local)
        self.shards = shards
        self.seed = config.seed
        self.should_stop = should_stop

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]:
        seeds = [worker_seed(self.seed, round_idx, w) for w in workers]
        return self.trainer.train(global_vector, workers, [self.shards[w] for w in workers], seeds, self.should_stop)


class InProcessEngine(Engine):
    def host(self, rounds: Rounds, should_stop: StopCheck) -> FederatedRun:
        return rounds(InProcessPool)

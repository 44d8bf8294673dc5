"""Worker side: each sampled worker trains the global model on its own shard only.

All workers of a round train at once: their models are stacked along a leading
"worker" dimension and one ``torch.func.vmap`` step updates every worker with
its own batch. That keeps the cost of a round proportional to the examples
trained, not to the number of workers (no per-worker model copies, no Python
loop over workers). Shards of unequal size are padded and masked: a worker
whose epoch is over stops moving while the others finish theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .data import normalize

Params = dict[str, torch.Tensor]
EVAL_SAMPLE = 512  # examples of its own shard each worker scores itself on, before and after


class TrainingStopped(Exception):
    """The user stopped the run; raised between batches."""


class TrainingDiverged(RuntimeError):
    """A worker's loss became NaN or infinite."""


@dataclass(frozen=True)
class LocalSettings:
    """How every worker of a run trains: what the server sends along with the weights each round."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    clip_norm: float  # per-worker gradient norm cap; square activations blow up without it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LocalSettings:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass
class WorkerUpdate:
    worker: int
    num_examples: int  # size of the worker's shard: its FedAvg weight
    delta: torch.Tensor  # flat float32 [P]: local model minus global model
    loss_before: float
    loss_after: float
    accuracy_after: float  # on its own shard (a sample of it)


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`; also works on a stacked [K, P] vector (gives [K, ...] tensors)."""
    out, start = {}, 0
    lead = vector.shape[:-1]
    for name, p in like.items():
        out[name] = vector[..., start : start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    return out


def model_params(model: nn.Module) -> Params:
    return {name: p.detach() for name, p in model.named_parameters()}


def worker_seed(seed: int, round_idx: int, worker: int) -> int:
    return int(np.random.SeedSequence([seed, round_idx, worker, 7]).generate_state(1)[0])


def epoch_orders(shard_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The order a worker visits its shard in, one permutation per local epoch."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(shard_size, generator=gen) for _ in range(epochs)]


class BatchedTrainer:
    """Trains many workers of one model at once; reused across rounds."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: LocalSettings):
        self.model = model
        self.images = images  # uint8 [N, 28, 28], the whole training set
        self.labels = labels
        self.settings = settings
        self.template = model_params(model)
        self._grad_step = vmap(grad_and_value(self._batch_loss))
        self._forward = vmap(self._logits)

    def _logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def _batch_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(self._logits(params, x), y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1)

    def train(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        seeds: list[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[WorkerUpdate]:
        """Train each worker on its shard (global indices into the training set) from the global model."""
        k = len(workers)
        orders = [epoch_orders(len(shard), self.settings.epochs, seed) for shard, seed in zip(shards, seeds)]
        probe = _pad([shard[order[0][:EVAL_SAMPLE]] for shard, order in zip(shards, orders)])
        stacked = unflatten(global_vector.expand(k, -1).clone(), self.template)
        loss_before, _ = self._score(stacked, probe)
        velocity = {name: torch.zeros_like(p) for name, p in stacked.items()}
        for epoch in range(self.settings.epochs):
            visits = _pad([shard[order[epoch]] for shard, order in zip(shards, orders)])
            for start in range(0, visits.shape[1], self.settings.batch_size):
                if should_stop and should_stop():
                    raise TrainingStopped()
                self._sgd_step(stacked, velocity, visits[:, start : start + self.settings.batch_size], workers)
        loss_after, accuracy_after = self._score(stacked, probe)
        deltas = flatten_stacked(stacked) - global_vector
        return [
            WorkerUpdate(
                w, len(shard), deltas[i], loss_before[i].item(), loss_after[i].item(), accuracy_after[i].item()
            )
            for i, (w, shard) in enumerate(zip(workers, shards))
        ]

    def _sgd_step(self, params: Params, velocity: Params, batch: torch.Tensor, workers: list[int]) -> None:
        """One masked SGD-with-momentum step for every worker; index -1 marks padding."""
        mask = (batch >= 0).float()
        x, y = self._gather(batch)
        grads, losses = self._grad_step(params, x, y, mask)
        if not torch.isfinite(losses).all():
            bad = [workers[i] for i in torch.nonzero(~torch.isfinite(losses)).flatten().tolist()]
            raise TrainingDiverged(
                f"Training diverged on worker(s) {bad} (loss became NaN/inf): lower the learning rate "
                "or raise the batch size."
            )
        norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads.values()))
        # Same rule as torch.nn.utils.clip_grad_norm_, per worker; finished workers (no real example) stay put.
        scale = (self.settings.clip_norm / (norms + 1e-6)).clamp(max=1.0) * (mask.sum(1) > 0)
        m, lr = self.settings.momentum, self.settings.lr
        for name, g in grads.items():
            s = scale.view(-1, *[1] * (g.dim() - 1))
            active = (s > 0).to(g.dtype)
            velocity[name].mul_(1 - active * (1 - m)).add_(g * s)
            params[name].sub_(lr * velocity[name] * active)

    def _score(self, params: Params, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy of each worker's model on its own probe examples."""
        mask = (probe >= 0).float()
        x, y = self._gather(probe)
        with torch.no_grad():
            logits = self._forward(params, x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
        correct = (logits.argmax(-1) == y).float()
        count = mask.sum(1).clamp(min=1)
        return (losses * mask).sum(1) / count, (correct * mask).sum(1) / count

    def _gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        safe = index.clamp(min=0)
        return normalize(self.images[safe.flatten()]).view(*index.shape, 1, 28, 28), self.labels[safe]


def flatten_stacked(params: Params) -> torch.Tensor:
    return torch.cat([p.flatten(1) for p in params.values()], dim=1)


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack index rows of unequal length into [K, max_len], padding with -1."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out

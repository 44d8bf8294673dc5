"""Worker side: each sampled worker trains the global model on its own shard only.

All workers of a round train at once: their models are stacked along a leading
"worker" dimension and one ``torch.func.vmap`` step updates every worker with
its own batch. That keeps the cost of a round proportional to the examples
trained, not to the number of workers (no per-worker model copies, no Python
loop over workers). Shards of unequal size are padded and masked: a worker
whose epoch is over stops moving while the others finish theirs.

With example-level DP (dp.ExampleDP) each worker runs DP-SGD instead: Poisson
batches, each example's gradient clipped (per-example gradients are one more vmap,
computed a chunk of examples at a time to bound memory), Gaussian noise on the sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.linalg import vector_norm

from .data import normalize
from .dp import ExampleDP, SecureRandom, poisson_batches, poisson_plan

Params = dict[str, torch.Tensor]
EVAL_SAMPLE = 512  # examples of its own shard each worker scores itself on, before and after
# Per-example gradients of one DP-SGD chunk (all workers). Under glibc's 32 MB mmap threshold, so the
# memory is reused between chunks instead of being mapped (and page-faulted) afresh every time.
PER_EXAMPLE_BYTES = 30 * 2**20


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
    dp_clip: float = 0.0  # when positive, example-level DP-SGD: each example's gradient norm cap S
    dp_noise: float = 0.0  # and the noise multiplier z (noise std z * S on each step's sum)

    @property
    def example_dp(self) -> ExampleDP | None:
        return ExampleDP(self.dp_clip, self.dp_noise) if self.dp_clip > 0 else None

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

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        settings: LocalSettings,
    ):
        self.model = model
        self.images = images  # uint8 [N, 28, 28], the whole training set
        self.labels = labels
        self.settings = settings
        self.dp = settings.example_dp
        self.template = model_params(model)
        self.num_params = sum(p.numel() for p in self.template.values())
        self._grad_step = vmap(grad_and_value(self._batch_loss))
        self._forward = vmap(self._logits)
        # [K workers, b examples] -> one gradient per example; params are shared by a worker's examples.
        self._example_grads = vmap(vmap(grad(self._example_loss), in_dims=(None, 0, 0)))
        self._weighted_grads = vmap(grad(self._weighted_loss))
        self._rng = SecureRandom() if self.dp else None

    def _logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def _batch_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(self._logits(params, x), y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1)

    def _example_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(params, x.unsqueeze(0)), y.unsqueeze(0))

    def train(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        seeds: list[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[WorkerUpdate]:
        """Train each worker on its shard (global indices into the training set) from the global model.

        With example-level DP the batches come from the secure generator, not from ``seeds``.
        """
        if self.dp:
            return self._train_private(global_vector, workers, shards, should_stop)
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
        self._momentum_step(params, velocity, grads, scale)

    def _momentum_step(self, params: Params, velocity: Params, grads: Params, scale: torch.Tensor) -> None:
        """SGD with momentum on ``grads * scale`` per worker; a worker whose scale is 0 does not move."""
        m, lr = self.settings.momentum, self.settings.lr
        for name, g in grads.items():
            s = scale.view(-1, *[1] * (g.dim() - 1))
            active = (s > 0).to(g.dtype)
            velocity[name].mul_(1 - active * (1 - m)).add_(g * s)
            params[name].sub_(lr * velocity[name] * active)

    def _train_private(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        should_stop: Callable[[], bool] | None,
    ) -> list[WorkerUpdate]:
        """DP-SGD on every worker; the per-example clip replaces ``settings.clip_norm``.

        Losses and accuracies on a worker's own shard would not be private: they are reported as NaN.
        """
        plans = [poisson_plan(len(shard), self.settings.batch_size, self.settings.epochs) for shard in shards]
        expected_batch = torch.tensor([p.expected_batch for p in plans])
        stacked = unflatten(global_vector.expand(len(workers), -1).clone(), self.template)
        velocity = {name: torch.zeros_like(p) for name, p in stacked.items()}
        for step in range(max(p.steps for p in plans)):
            if should_stop and should_stop():
                raise TrainingStopped()
            # A worker steps (with noise) even when its batch came out empty: the number of steps is public.
            rates = [p.sample_rate if step < p.steps else 0.0 for p in plans]
            active = torch.tensor([rate > 0 for rate in rates], dtype=torch.float32)
            batch = _pad(poisson_batches(shards, rates, self._rng))
            self._private_step(stacked, velocity, batch, active / expected_batch, workers)
        deltas = flatten_stacked(stacked) - global_vector
        nan = float("nan")
        return [
            WorkerUpdate(w, len(shard), deltas[i], nan, nan, nan) for i, (w, shard) in enumerate(zip(workers, shards))
        ]

    def _private_step(
        self, params: Params, velocity: Params, batch: torch.Tensor, scale: torch.Tensor, workers: list[int]
    ) -> None:
        """One DP-SGD step: clipped per-example gradients summed, plus N(0, z^2 S^2), times ``scale`` = 1/E[batch]."""
        sums = self._clipped_sums(params, batch)
        noise = self._rng.normal((len(workers), self.num_params), self.dp.noise_multiplier * self.dp.clip)
        noisy = {name: g + n for (name, g), n in zip(sums.items(), unflatten(noise, self.template).values())}
        # Only the noisy sums are looked at: the raw losses of private examples are never read.
        finite = torch.stack([g.flatten(1).isfinite().all(1) for g in noisy.values()]).all(0)
        if not finite.all():
            bad = [workers[i] for i in torch.nonzero(~finite).flatten().tolist()]
            raise TrainingDiverged(f"DP-SGD diverged on worker(s) {bad}: lower the learning rate or the clip norm.")
        self._momentum_step(params, velocity, noisy, scale)

    def _clipped_sums(self, params: Params, batch: torch.Tensor) -> Params:
        """Per worker, the sum over its batch of each example's gradient clipped to norm S.

        The per-example gradients are only needed for their norms, so they are made a
        chunk at a time and dropped; the clipped sum is then one batched backward pass
        of the loss weighted by each example's clip factor (Opacus's factor).
        """
        mask = (batch >= 0).float()
        x, y = self._gather(batch)
        chunk = max(1, PER_EXAMPLE_BYTES // (4 * len(batch) * self.num_params))
        norms = (
            torch.cat(
                [
                    self._example_norms(params, x[:, start : start + chunk], y[:, start : start + chunk])
                    for start in range(0, batch.shape[1], chunk)
                ],
                dim=1,
            )
            if batch.shape[1]
            else torch.zeros_like(mask)
        )
        factors = (self.dp.clip / (norms + 1e-6)).clamp(max=1.0) * mask
        return self._weighted_grads(params, x, y, factors)

    def _example_norms(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grads = self._example_grads(params, x, y)
        return vector_norm(torch.stack([vector_norm(g.flatten(2), dim=2) for g in grads.values()]), dim=0)

    def _weighted_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(self._logits(params, x), y, reduction="none") * weights).sum()

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

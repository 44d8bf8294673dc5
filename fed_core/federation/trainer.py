"""Worker side: each sampled worker trains the global model on its own shard only.

All workers of a round train at once: their models are stacked along a leading
"worker" dimension and one step updates every worker with its own batch: one
forward pass of all of them (stacked.py: each convolution of all workers is one
grouped convolution), one backward pass, and a few ``torch._foreach`` calls for
the optimizer instead of one pass per arithmetic operation. That keeps the cost
of a round proportional to the examples trained, not to the number of workers
(no per-worker model copies, no Python loop over workers). Shards of unequal
size are padded and masked: a worker whose epoch is over stops moving while the
others finish theirs. Sampled workers are trained in groups that fit a memory
budget (:func:`bytes_per_worker`); each group is one such pass, and a worker's
result does not depend on which group it is in.

Two local objectives beside FedAvg's: FedProx adds mu/2 ||w - w_global||^2; SCAFFOLD
adds a control-variate correction (c - c_i) to every step (strategies/scaffold.py keeps the variates).

With example-level DP (dp.ExampleDP) each worker runs DP-SGD instead: Poisson
batches, each example's gradient clipped (its norm from the layers' activations and
output gradients, ghost_clip.py, without building it), Gaussian noise on the sum.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fed_core.data.augment import augmented
from fed_core.data.mnist import MEAN, STD, normalize
from fed_core.federation.stacked import stacked_logits
from fed_core.models import build_model
from fed_core.privacy.dp import ExampleDP, SecureRandom, poisson_batches, poisson_plan
from fed_core.privacy.ghost_clip import GhostClipper
from fed_core.vocabulary import (
    LocalSettings,
    Params,
    TrainingDiverged,
    TrainingStopped,
    WorkerUpdate,
    model_params,
    unflatten,
)

WorkerTensors = list[list[torch.Tensor]]  # [worker][parameter], in the model's parameter order
EVAL_SAMPLE = 512  # examples of its own shard each worker scores itself on, before and after
SCORE_CHUNK = 16  # of those, scored per forward pass (small activations stay in cache: faster)
# What a run's trainer may hold at once for its workers' batches, activations and model copies.
DEFAULT_MEMORY_BUDGET = 2 * 2**30
# Activations of one evaluation chunk: about the size of a CPU's last-level cache, where a forward pass is fastest
# (fedavg_cnn: 80 images a chunk, 1.9x faster than 2,500 on the 2-core machine; crypto_cnn: 3,100).
EVAL_CHUNK_BYTES = 32 * 2**20
# Model-sized float32 tensors one worker keeps during a step: weights, velocity, gradient, scaled step, correction.
MODEL_COPIES = 5
AUGMENT_STREAM = 1  # worker_seed(seed, 0, AUGMENT_STREAM) seeds a worker's augmentation, apart from its batch order


def worker_seed(seed: int, round_idx: int, worker: int) -> int:
    return int(np.random.SeedSequence([seed, round_idx, worker, 7]).generate_state(1)[0])


def epoch_orders(shard_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The order a worker visits its shard in, one permutation per local epoch."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(shard_size, generator=gen) for _ in range(epochs)]


@cache
def activation_bytes(model_name: str) -> int:
    """Bytes autograd saves for backward per training example of ``model_name`` (measured once, on 1 and 2)."""
    model = build_model(model_name)

    def saved(batch: int) -> int:
        total = 0

        def keep(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(torch.zeros(batch, 1, 28, 28)).sum()
        return total

    return saved(2) - saved(1)


def bytes_per_worker(model_name: str, batch_size: int) -> int:
    """Peak memory one worker adds to a vmapped training pass of ``model_name`` at ``batch_size``.

    Its model-sized tensors, plus the larger of a training step (saved activations and
    their gradients) and the forward pass that scores it on SCORE_CHUNK of its examples.
    """
    params = sum(p.numel() for p in build_model(model_name).parameters())
    activations = activation_bytes(model_name) * max(2 * batch_size, SCORE_CHUNK)
    return MODEL_COPIES * 4 * params + activations


def workers_per_group(model_name: str, batch_size: int, memory_budget_bytes: int) -> int:
    """How many workers one vmapped pass may train within the budget (at least one)."""
    return max(1, memory_budget_bytes // bytes_per_worker(model_name, batch_size))


class BatchedTrainer:
    """Trains many workers of one model at once, in groups that fit ``memory_budget_bytes``; reused across rounds."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        settings: LocalSettings,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    ):
        self.model = model
        self.images = images  # uint8 [N, 28, 28], the whole training set
        self.labels = labels
        self.settings = settings
        self.dp = ExampleDP(settings.dp_clip, settings.dp_noise) if settings.dp_clip > 0 else None
        if settings.augment_multiplicity > 1 and not (self.dp and settings.augment):
            raise ValueError("Augmentation multiplicity is an option of DP-SGD with augmentation on.")
        self.template = model_params(model)
        self.num_params = sum(p.numel() for p in self.template.values())
        self.group_size = workers_per_group(settings.model, settings.batch_size, memory_budget_bytes)
        self._clipper = GhostClipper(model) if self.dp else None
        self._rng = SecureRandom() if self.dp else None

    def train(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        seeds: list[int],
        should_stop: Callable[[], bool] | None = None,
        corrections: torch.Tensor | None = None,
    ) -> list[WorkerUpdate]:
        """Train each worker on its shard (global indices into the training set) from the global model.

        ``corrections`` [K, P] (SCAFFOLD's c - c_i) is added to each worker's every step.
        With example-level DP the batches come from the secure generator, not from ``seeds``.
        """
        updates = []
        for start in range(0, len(workers), self.group_size):
            group = slice(start, start + self.group_size)
            correction = None if corrections is None else corrections[group]
            if self.dp:
                updates += self._train_private(global_vector, workers[group], shards[group], should_stop, correction)
            else:
                updates += self._train_group(
                    global_vector, workers[group], shards[group], seeds[group], should_stop, correction
                )
        return updates

    def _train_group(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        seeds: list[int],
        should_stop: Callable[[], bool] | None,
        corrections: torch.Tensor | None,
    ) -> list[WorkerUpdate]:
        """One vmapped (or grouped) pass over these workers' local epochs."""
        k = len(workers)
        orders = [epoch_orders(len(shard), self.settings.epochs, seed) for shard, seed in zip(shards, seeds)]
        probe = _pad([shard[order[0][:EVAL_SAMPLE]] for shard, order in zip(shards, orders)])
        augmenters = self._augmenters(seeds)
        stacked = unflatten(global_vector.expand(k, -1).clone(), self.template)
        loss_before, _ = self._score(stacked, probe)
        velocity = {name: torch.zeros_like(p) for name, p in stacked.items()}
        steps = torch.zeros(k, dtype=torch.long)
        for epoch in range(self.settings.epochs):
            visits = _pad([shard[order[epoch]] for shard, order in zip(shards, orders)])
            for start in range(0, visits.shape[1], self.settings.batch_size):
                if should_stop and should_stop():
                    raise TrainingStopped()
                batch = visits[:, start : start + self.settings.batch_size]
                steps += (batch >= 0).any(1)
                self._sgd_step(stacked, velocity, batch, workers, global_vector, corrections, augmenters)
        loss_after, accuracy_after = self._score(stacked, probe)
        deltas = flatten_stacked(stacked) - global_vector
        return [
            WorkerUpdate(
                w,
                len(shard),
                deltas[i],
                loss_before[i].item(),
                loss_after[i].item(),
                accuracy_after[i].item(),
                int(steps[i]),
            )
            for i, (w, shard) in enumerate(zip(workers, shards))
        ]

    def _sgd_step(
        self,
        params: Params,
        velocity: Params,
        batch: torch.Tensor,
        workers: list[int],
        global_vector: torch.Tensor,
        corrections: torch.Tensor | None,
        augmenters: list[torch.Generator] | None,
    ) -> None:
        """One masked SGD-with-momentum step for every worker; index -1 marks padding."""
        mask = (batch >= 0).float()
        x, y = self._gather(batch, augmenters)
        grads, losses = self._gradients(params, x, y, mask)
        if not torch.isfinite(losses).all():
            bad = [workers[i] for i in torch.nonzero(~torch.isfinite(losses)).flatten().tolist()]
            raise TrainingDiverged(
                f"Training diverged on worker(s) {bad} (loss became NaN/inf): lower the learning rate "
                "or raise the batch size."
            )
        self._add_proximal(grads, params, global_vector)
        norms = torch.stack(torch._foreach_norm([g for row in grads for g in row])).view(len(grads), -1).norm(dim=1)
        # Same rule as torch.nn.utils.clip_grad_norm_, per worker; finished workers (no real example) stay put.
        scale = (self.settings.clip_norm / (norms + 1e-6)).clamp(max=1.0) * (mask.sum(1) > 0)
        self._momentum_step(params, velocity, grads, scale, corrections)

    def _gradients(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[WorkerTensors, torch.Tensor]:
        """Each worker's gradient of its masked mean batch loss, and that loss [K] (stacked.py: why plain autograd)."""
        leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
        examples = F.cross_entropy(stacked_logits(self.model, leaves, x).flatten(0, 1), y.flatten(), reduction="none")
        losses = (examples.view_as(mask) * mask).sum(1) / mask.sum(1).clamp(min=1)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return per_worker(dict(zip(leaves, grads))), losses.detach()

    def _add_proximal(self, grads: WorkerTensors, params: Params, global_vector: torch.Tensor) -> None:
        """FedProx: the gradient of mu/2 ||w - w_global||^2, mu (w - w_global), added to each worker's gradient."""
        mu = self.settings.prox_mu
        if mu == 0:
            return
        anchor = list(unflatten(global_vector, self.template).values())
        for row, own in zip(grads, per_worker(params)):
            torch._foreach_add_(row, torch._foreach_sub(own, anchor), alpha=mu)

    def _momentum_step(
        self,
        params: Params,
        velocity: Params,
        grads: WorkerTensors,
        scale: torch.Tensor,
        corrections: torch.Tensor | None = None,
    ) -> None:
        """SGD with momentum on ``grads * scale (+ correction)`` per worker; a worker whose scale is 0 does not move."""
        m, lr = self.settings.momentum, self.settings.lr
        active = torch.nonzero(scale > 0).flatten().tolist()
        if not active:
            return
        steps = [g for i in active for g in grads[i]]
        torch._foreach_mul_(steps, [scale[i].item() for i in active for _ in grads[i]])
        if corrections is not None:
            own = per_worker(unflatten(corrections, self.template))
            torch._foreach_add_(steps, [c for i in active for c in own[i]])
        if m > 0:  # without momentum the velocity is the step itself: skip two passes over the model
            velocities = per_worker(velocity)
            moving = [v for i in active for v in velocities[i]]
            torch._foreach_mul_(moving, m)
            torch._foreach_add_(moving, steps)
            steps = moving
        weights = per_worker(params)
        torch._foreach_add_([w for i in active for w in weights[i]], steps, alpha=-lr)

    def _train_private(
        self,
        global_vector: torch.Tensor,
        workers: list[int],
        shards: list[torch.Tensor],
        should_stop: Callable[[], bool] | None,
        corrections: torch.Tensor | None = None,
    ) -> list[WorkerUpdate]:
        """DP-SGD on every worker; the per-example clip replaces ``settings.clip_norm``.

        Losses and accuracies on a worker's own shard would not be private: they are reported as NaN.
        """
        if self.settings.dp_noise_split:
            return self._clipped_gradients(global_vector, workers, shards)
        plans = [poisson_plan(len(shard), self.settings.batch_size, self.settings.epochs) for shard in shards]
        expected_batch = torch.tensor([p.expected_batch for p in plans])
        stacked = unflatten(global_vector.expand(len(workers), -1).clone(), self.template)
        velocity = {name: torch.zeros_like(p) for name, p in stacked.items()}
        # DP-SGD's batches come from the secure generator, unseeded, so the redrawing is unseeded too.
        augmenters = self._augmenters([secrets.randbits(32) for _ in workers])
        for step in range(max(p.steps for p in plans)):
            if should_stop and should_stop():
                raise TrainingStopped()
            # A worker steps (with noise) even when its batch came out empty: the number of steps is public.
            rates = [p.sample_rate if step < p.steps else 0.0 for p in plans]
            active = torch.tensor([rate > 0 for rate in rates], dtype=torch.float32)
            batch = _pad(poisson_batches(shards, rates, self._rng))
            self._private_step(
                stacked, velocity, batch, active / expected_batch, workers, global_vector, corrections, augmenters
            )
        deltas = flatten_stacked(stacked) - global_vector
        nan = float("nan")
        return [
            WorkerUpdate(w, len(shard), deltas[i], nan, nan, nan, plan.steps)
            for i, (w, shard, plan) in enumerate(zip(workers, shards, plans))
        ]

    def _clipped_gradients(
        self, global_vector: torch.Tensor, workers: list[int], shards: list[torch.Tensor]
    ) -> list[WorkerUpdate]:
        """FedSGD's share of one central DP-SGD step: each worker's clipped gradient sum over one Poisson batch.

        No noise and no learning rate here: the sum of these, plus the workers' noise shares,
        comes out of secure aggregation, and the server takes the step (aggregation.py).
        """
        rates = [poisson_plan(len(shard), self.settings.batch_size, 1).sample_rate for shard in shards]
        batch = _pad(poisson_batches(shards, rates, self._rng))
        params = unflatten(global_vector.expand(len(workers), -1), self.template)
        sums = flatten_stacked(self._clipped_sums(params, batch))
        if not sums.isfinite().all():
            raise TrainingDiverged("DP-SGD diverged: the global model gives NaN gradients; lower the learning rate.")
        nan = float("nan")
        return [
            WorkerUpdate(w, len(shard), sums[i], nan, nan, nan, 1) for i, (w, shard) in enumerate(zip(workers, shards))
        ]

    def _private_step(
        self,
        params: Params,
        velocity: Params,
        batch: torch.Tensor,
        scale: torch.Tensor,
        workers: list[int],
        global_vector: torch.Tensor,
        corrections: torch.Tensor | None,
        augmenters: list[torch.Generator] | None,
    ) -> None:
        """One DP-SGD step: clipped per-example gradients summed, plus N(0, z^2 S^2), times ``scale`` = 1/E[batch].

        A worker whose ``scale`` is 0 has finished its steps and does not move.
        """
        sums = self._clipped_sums(params, batch, augmenters)
        noise = self._rng.normal((len(workers), self.num_params), self.dp.noise_multiplier * self.dp.clip)
        noisy = {name: g + n for (name, g), n in zip(sums.items(), unflatten(noise, self.template).values())}
        # Only the noisy sums are looked at: the raw losses of private examples are never read.
        finite = torch.stack([g.flatten(1).isfinite().all(1) for g in noisy.values()]).all(0)
        if not finite.all():
            bad = [workers[i] for i in torch.nonzero(~finite).flatten().tolist()]
            raise TrainingDiverged(f"DP-SGD diverged on worker(s) {bad}: lower the learning rate or the clip norm.")
        steps = per_worker({name: g * scale.view(-1, *[1] * (g.dim() - 1)) for name, g in noisy.items()})
        self._add_proximal(steps, params, global_vector)  # data-independent: costs no privacy
        self._momentum_step(params, velocity, steps, (scale > 0).float(), corrections)

    def _clipped_sums(
        self, params: Params, batch: torch.Tensor, augmenters: list[torch.Generator] | None = None
    ) -> Params:
        """Per worker, the sum over its batch of each example's gradient clipped to norm S (ghost_clip.py).

        Each worker's real examples (the batch is padded at the end with -1) go through
        one forward and one backward pass; the per-example gradients are never all built.
        With augmentation multiplicity m, each example is redrawn m times and its gradient is their mean.
        """
        copies = self.settings.augment_multiplicity
        x, y = self._gather(batch.repeat_interleave(copies, dim=1), augmenters)
        sums = []
        for k, size in enumerate((batch >= 0).sum(1).tolist()):
            worker = {name: p[k] for name, p in params.items()}
            rows = slice(0, size * copies)
            sums.append(self._clipper.clipped_sum(worker, x[k, rows], y[k, rows], self.dp.clip, copies)[0])
        return {name: torch.stack([s[name] for s in sums]) for name in params}

    def _score(self, params: Params, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy of each worker's model on its own probe examples."""
        mask = (probe >= 0).float()
        y = self.labels[probe.clamp(min=0)]
        with torch.no_grad():  # images gathered a chunk at a time: all workers' probes at once would not be small
            parts = probe.split(SCORE_CHUNK, dim=1)
            logits = torch.cat([stacked_logits(self.model, params, self._gather(part)[0]) for part in parts], dim=1)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
        correct = (logits.argmax(-1) == y).float()
        count = mask.sum(1).clamp(min=1)
        return (losses * mask).sum(1) / count, (correct * mask).sum(1) / count

    def _gather(
        self, index: torch.Tensor, augmenters: list[torch.Generator] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [K, B, 1, 28, 28], normalised, and labels of the indices; redrawn at random with augmenters."""
        safe = index.clamp(min=0)
        if augmenters is None:
            return normalize(self.images[safe.flatten()]).view(*index.shape, 1, 28, 28), self.labels[safe]
        images = self.images[safe.flatten()].float().div(255).view(*index.shape, 1, 28, 28)
        return (augmented(images, augmenters) - MEAN) / STD, self.labels[safe]

    def _augmenters(self, seeds: list[int]) -> list[torch.Generator] | None:
        """One generator per worker for its redrawn batches, when the run augments (its own stream of the seed)."""
        if not self.settings.augment:
            return None
        return [torch.Generator().manual_seed(worker_seed(seed, 0, AUGMENT_STREAM)) for seed in seeds]


def flatten_stacked(params: Params) -> torch.Tensor:
    return torch.cat([p.flatten(1) for p in params.values()], dim=1)


def per_worker(stacked: Params) -> WorkerTensors:
    """Views of stacked [K, ...] tensors as each worker's own list (writes go through to the stack)."""
    return [list(row) for row in zip(*(p.unbind() for p in stacked.values()))]


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack index rows of unequal length into [K, max_len], padding with -1."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out

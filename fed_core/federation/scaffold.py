"""SCAFFOLD (Karimireddy et al. 2020): control variates that correct each worker's drift on non-IID data.

The server keeps a control variate c, every worker its own c_i (zero until it first trains),
each a vector the size of the model. A sampled worker adds c - c_i to every local step
(client.BatchedTrainer), then updates its variate with the paper's option II:

    c_i+ = c_i - c + (x - y_i) / (steps_i * lr)

where x is the global model it started from, y_i its local model after ``steps_i`` local
steps. It keeps c_i+ and sends Δc_i = c_i+ - c_i beside its model update; the server adds
the mean over all N workers, (1/N) Σ Δc_i, to c. With plain local SGD, (x - y_i) / (steps_i lr)
is the worker's mean corrected step, so c_i+ is its mean (clipped) gradient. Local momentum m
moves the model about 1/(1 - m) times further per gradient, so lr is replaced by the effective
step lr / (1 - m) there (exact for m = 0, an estimate otherwise; without it the variates come
out 1/(1 - m) times too large and training falls apart).

In this simulation both sides sit in one object held by the in-process pool, because the
workers live in the same process: ``server`` is the server's c, ``own`` a worker's c_i.
Memory: one model-sized vector per worker that has trained (100 workers of fedavg_cnn: 660 MB).
"""

from __future__ import annotations

import torch

from fed_core.vocabulary import WorkerUpdate


class ControlVariates:
    """The server's variate c and each worker's c_i, updated after every round (option II)."""

    def __init__(self, num_workers: int, num_params: int) -> None:
        self.num_workers = num_workers
        self.server = torch.zeros(num_params)
        self.workers: dict[int, torch.Tensor] = {}

    def own(self, worker: int) -> torch.Tensor:
        return self.workers.get(worker, torch.zeros_like(self.server))

    def corrections(self, workers: list[int]) -> torch.Tensor:
        """[K, P]: c - c_i, what each sampled worker adds to its every local step."""
        return torch.stack([self.server - self.own(w) for w in workers])

    def update(self, updates: list[WorkerUpdate], lr: float, momentum: float = 0.0) -> None:
        """After the round: each worker's c_i+ from its update, then c += (1/N) Σ (c_i+ - c_i)."""
        step_size = lr / (1 - momentum)
        total = torch.zeros_like(self.server)
        for update in updates:
            old = self.own(update.worker)
            new = old - self.server - update.delta / (max(1, update.local_steps) * step_size)
            self.workers[update.worker] = new
            total += new - old
        self.server += total / self.num_workers

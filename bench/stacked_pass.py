"""One process timing one way of computing K workers' gradients at once (the trainer's, or torch.func's vmap).

    python bench/stacked_pass.py stacked crypto_cnn 5 128   # CPU and wall ms a step; bench_train.py --only stacked

``stacked`` is the trainer's pass (fed_core/federation/stacked.py, plain autograd); ``vmap`` is what the trainer
did before, ``vmap(grad_and_value(loss))`` over functional_call, kept here as the reference it is measured
against. The caller measures the whole process (wall, CPU, peak RSS): torch.func's first gradient imports
torch._dynamo, which stays resident.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, Params

STEPS, WARMUP = 40, 3


def vmap_gradients(model: torch.nn.Module):
    from torch.func import functional_call, grad_and_value, vmap

    def loss(params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1)

    return vmap(grad_and_value(loss))


def main() -> None:
    way, model_name, k, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    model = new_model(model_name, "default", seed=0)
    params = {name: p.detach().expand(k, *p.shape).clone() for name, p in model.named_parameters()}
    x, y, mask = torch.randn(k, b, 1, 28, 28), torch.randint(0, 10, (k, b)), torch.ones(k, b)
    if way == "vmap":
        step = vmap_gradients(model)
    else:
        trainer = BatchedTrainer(
            model,
            torch.zeros(1, 28, 28, dtype=torch.uint8),
            torch.zeros(1),
            LocalSettings(model_name, 1, b, 0.1, 0.0, 1.0),
        )
        step = trainer._gradients
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            started, cpu = time.perf_counter(), time.process_time()
        step(params, x, y, mask)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"a step: {1000 * cpu / STEPS:.1f} ms CPU, {1000 * wall / STEPS:.1f} ms wall")


if __name__ == "__main__":
    main()

"""Cost of Shapley contributions in a realistic round on real MNIST: prints every figure it is quoted for.

    python bench/bench_shapley.py                       # crypto_cnn, 4 and 8 workers exact, 10 and 20 sampled
    python bench/bench_shapley.py --model relu_cnn      # a heavier model
    python bench/bench_shapley.py --samples 32 64       # sampled orders to try above 8 workers

Each setting trains one FedAvg round of K workers (IID, the whole training set, default local settings),
then times leave-one-out and Shapley on the second round's updates, scored on the usual 1,000 test images.
Times are the median of --repeats runs on one torch thread, wall and CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist, load_mnist
from fed_core.engines.inprocess import InProcessPool
from fed_core.federation.server import Evaluator, contribution_scores, partition_for, run_round
from fed_core.federation.shapley import EXACT_MAX_WORKERS, shapley_values
from fed_core.federation.strategies import fedavg, strategy_for
from fed_core.models import new_model
from fed_core.vocabulary import Aggregate, flatten, model_params


def median_seconds(work, repeats: int) -> tuple[str, object]:
    """Median wall and CPU time of ``work``; on one thread CPU time is what a quiet machine's wall time would be."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return f"{statistics.median(walls):.3f} s (CPU {statistics.median(cpus):.3f} s)", result


def second_round(config: TrainConfig, data: Mnist):
    """The start model, updates and counts of round 2, after one real round, and the round's scorers."""
    model = new_model(config.model, config.init, config.seed)
    pool = InProcessPool(model, data, partition_for(config, data), config)
    evaluator = Evaluator(model, data, config)
    optimizer = strategy_for(config)
    global_vector = run_round(config, 1, flatten(model_params(model)), pool, optimizer, evaluator).global_vector
    updates = pool.train(global_vector, list(range(config.workers)), 2)
    deltas = torch.stack([u.delta for u in updates])
    counts = torch.tensor([u.num_examples for u in updates])
    return global_vector, deltas, counts, optimizer, evaluator


def bench(model: str, workers: int, samples: list[int], repeats: int, data: Mnist) -> None:
    config = TrainConfig(workers=workers, model=model)
    global_vector, deltas, counts, optimizer, evaluator = parts = second_round(config, data)
    accuracy = evaluator.subset_accuracies(global_vector.unsqueeze(0)).item()
    reports = [{} for _ in range(workers)]
    combined = Aggregate(fedavg(deltas, counts), reports, deltas, counts, None, None, 0.0)
    no_shapley = replace(config, shapley=False)
    loo_seconds, loo = median_seconds(
        lambda: contribution_scores(no_shapley, 2, global_vector, combined, optimizer, evaluator)["contribution"],
        repeats,
    )
    print(
        f"{model}, {workers} workers (start of round 2: {accuracy:.1%} on the subset): "
        f"leave-one-out {loo_seconds}, sum {loo.sum().item():+.4f}"
    )
    for count in samples if workers > EXACT_MAX_WORKERS else [None]:
        extra = {} if count is None else {"samples": count, "generator": torch.Generator().manual_seed(0)}
        seconds, result = median_seconds(lambda extra=extra: shapley_values(*parts, **extra), repeats)
        method = "exact" if result.exact else f"{count} sampled orders"
        interval = (
            ""
            if result.exact
            else f", 95% half-width mean {result.ci_halfwidth.mean().item():.4f} "
            f"max {result.ci_halfwidth.max().item():.4f}"
        )
        print(
            f"  Shapley {method}: {seconds}, sum {result.values.sum().item():+.4f}, "
            f"values {min(result.values.tolist()):+.4f}..{max(result.values.tolist()):+.4f}{interval}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="crypto_cnn")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 10, 20])
    parser.add_argument("--samples", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist()
    for workers in args.workers:
        bench(args.model, workers, args.samples, args.repeats, data)


if __name__ == "__main__":
    main()

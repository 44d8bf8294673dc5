"""What Flower's SecAgg+ costs a round on the flower engine (Simulation Engine), next to the plain round.

    python bench/bench_flower_secagg.py                                 # 3 workers, 3 rounds, 6,000 images
    python bench/bench_flower_secagg.py --workers 5 --train-size 60000

One simulation, two pools on the same virtual SuperNodes: each round the plain pool trains every worker
(one Message each, updates in the clear, FedAvg on the server), then the secure pool does the same round
through SecAggPlusWorkflow (four Messages each). Both start from the same global model each round, so
they do the same training. Prints every round's seconds, the mean of the rounds after the first (which
pays the SuperNodes' imports), the bytes a worker uploads, and the machine's load average, and how fast
this machine searches Flower's 32-bit mask seeds (flower_mask_seed.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines.flower_engine import FlowerPool, flower_pool_factory, simulate
from fed_core.engines.flower_mask_seed import SEED_SPACE, seeds_per_second
from fed_core.federation.server import partition_for
from fed_core.federation.strategies import fedavg
from fed_core.models import new_model
from fed_core.vocabulary import flatten, model_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig(workers=args.workers, rounds=args.rounds, train_size=args.train_size, engine="flower")
    data = load_mnist()
    seconds: dict[str, list[float]] = {"plain": [], "secure": []}
    upload: list[float] = []

    def serve(grid, shard_dir: Path) -> None:
        model = new_model(config.model, config.init, config.seed)
        plain = flower_pool_factory(grid, shard_dir)(model, data, partition_for(config, data), config)
        secure = FlowerPool(grid, TrainConfig(**{**config.to_dict(), "secure_aggregation": True})).connect()
        vector = flatten(model_params(model))
        workers = list(range(config.workers))
        for round_idx in range(1, config.rounds + 1):
            started = time.perf_counter()
            updates = plain.train(vector, workers, round_idx)
            fedavg(torch.stack([u.delta for u in updates]), torch.tensor([u.num_examples for u in updates]))
            seconds["plain"].append(time.perf_counter() - started)
            started = time.perf_counter()
            result = secure.run_secure_round(vector, workers, round_idx)
            seconds["secure"].append(time.perf_counter() - started)
            upload.append(result.upload_bytes)
            vector = vector + result.average

    called = time.perf_counter()
    simulate(config.workers, serve)
    print(
        f"{config.workers} workers, {config.rounds} rounds, {config.train_size:,} images; "
        f"simulation {time.perf_counter() - called:.1f} s in all; load average {os.getloadavg()[0]:.1f}"
    )
    for name, values in seconds.items():
        later = statistics.mean(values[1:]) if len(values) > 1 else float("nan")
        rounds = ", ".join(f"{s:.2f}" for s in values)
        print(f"{name:>6}: rounds {rounds} s; after the first: {later:.2f} s a round")
    parameters = flatten(model_params(new_model(config.model, config.init, config.seed))).numel()
    print(
        f"upload per worker and round: plain {parameters * 4:,} bytes (float32 update), secure {upload[-1]:,.0f} bytes"
    )
    rate = seeds_per_second()
    print(f"Flower mask seeds: {rate:,.0f} per second on one thread, all 2^32 in {SEED_SPACE / rate / 3600:.2f} hours")


if __name__ == "__main__":
    main()

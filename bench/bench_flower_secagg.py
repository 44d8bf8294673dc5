"""What Flower's SecAgg+ costs a round on the flower engine (``flwr run`` on the Simulation Runtime), next to the
plain round.

    python bench/bench_flower_secagg.py                                 # 3 workers, 3 rounds, 6,000 images
    python bench/bench_flower_secagg.py --workers 5 --train-size 60000

Two runs of the same config on the flower engine, one after the other: plain (one Message per worker, updates
in the clear, FedAvg on the server), then with secure aggregation (SecAggPlusWorkflow, four Messages each). The
same seeds give both the same sampling and starting model. Prints every round's seconds as the ServerApp
measured them, the mean of the rounds after the first (which pays the SuperNodes' imports), each run's wall
time (SuperLink, simulation process and Ray start-up included), the bytes a worker uploads, the machine's
load average, and how fast this machine searches Flower's 32-bit mask seeds (flower_mask_seed.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines import engine_for
from fed_core.engines.flower_mask_seed import SEED_SPACE, seeds_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist()
    for secure in (False, True):
        config = TrainConfig(
            workers=args.workers,
            rounds=args.rounds,
            train_size=args.train_size,
            engine="flower",
            secure_aggregation=secure,
            contribution_subset=0,
        )
        started = time.perf_counter()
        run = engine_for(config).run(data)
        seconds = [r.seconds for r in run.history]
        later = statistics.mean(seconds[1:]) if len(seconds) > 1 else float("nan")
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        print(
            f"{'secure' if secure else 'plain':>6}: rounds {rounds} s; after the first: {later:.2f} s a round;"
            f" run {time.perf_counter() - started:.1f} s in all; "
            f"upload per worker and round {run.history[-1].upload_bytes:,.0f} bytes; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    rate = seeds_per_second()
    print(f"Flower mask seeds: {rate:,.0f} per second on one thread, all 2^32 in {SEED_SPACE / rate / 3600:.2f} hours")


if __name__ == "__main__":
    main()

"""The server learning rate (eta) of the adaptive strategies, against FedAvg, on short real runs.

    python bench/bench_strategies.py                          # IID, eta 0.001 to 0.1
    python bench/bench_strategies.py --partition dirichlet    # non-IID
    python bench/bench_strategies.py --etas 0.003 0.01 0.03

Each row is one in-process run (crypto_cnn, 10 workers, C = 0.5, 20,000 training images, 10 rounds, seed 0)
and prints the test accuracy after every round with the run's wall time. FedAvg (eta 1) comes first as the
control; FedAdam and FedYogi alternate at each eta so a loaded machine slows both alike. Etas above
strategies.base.MAX_ETA are refused by the settings, which is why the default list stops there.
"""

from __future__ import annotations

import argparse
import time

from fed_core.config import TrainConfig, validate
from fed_core.data.mnist import load_mnist
from fed_core.data.partition import PARTITIONS
from fed_core.engines import engine_for

SETTINGS = dict(workers=10, rounds=10, fraction=0.5, train_size=20_000, contribution_subset=0, shapley=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", choices=PARTITIONS, default="iid")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    args = parser.parse_args()
    data = load_mnist()
    runs = [("fedavg", 1.0)] + [(name, eta) for eta in args.etas for name in ("fedadam", "fedyogi")]
    print(f"| partition | strategy | eta | accuracy after each round | final | wall |\n|{' --- |' * 6}")
    for strategy, eta in runs:
        config = validate(TrainConfig(**SETTINGS, strategy=strategy, server_lr=eta, partition=args.partition))
        start = time.perf_counter()
        history = engine_for(config).run(data).history
        accuracies = " ".join(f"{100 * r.test_accuracy:.1f}" for r in history)
        final, wall = f"{100 * history[-1].test_accuracy:.2f}%", time.perf_counter() - start
        print(f"| {args.partition} | {strategy} | {eta:g} | {accuracies} | {final} | {wall:.1f} s |")


if __name__ == "__main__":
    main()

"""Secure aggregation benchmark: what the protocol adds to a FedAvg round, in seconds and bytes.

    python bench/private_secagg.py                        # 10 and 100 workers, crypto_cnn-sized updates
    python bench/private_secagg.py --workers 10 --repeats 5
    python bench/private_secagg.py --no-training          # skip measuring a real training round

For each number of workers, with no dropout and with 10% of the workers dropping out after masking,
it prints the seconds of fed_core.privacy.secagg.secure_sum (mean of the repeats, and per stage: in this
simulation every worker's part runs in this process one after the other) against the plain
weighted average, and what it adds to a real in-process training round of that many workers
(measured here unless --no-training). Then the bytes each worker sends and receives, against the
4 bytes per parameter of a plain float32 update.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines import engine_for
from fed_core.federation.strategies import fedavg
from fed_core.models import build_model
from fed_core.privacy.secagg import STAGES, SecureAggregate, default_group_size, default_threshold, secure_sum

TRAIN_SIZE = 60_000
TARGET_OVERHEAD = {10: 0.2, 100: 1.0}  # share of a round the protocol may add (the targets)


def synthetic_round(workers: int, parameters: int, dropout: float) -> tuple[torch.Tensor, list[int], set[int]]:
    """Update-sized random deltas, MNIST split evenly, and which workers drop after masking."""
    rng = np.random.default_rng(workers)
    updates = torch.from_numpy(rng.normal(0, 0.01, (workers, parameters)).astype(np.float32))
    dropped = set(rng.choice(workers, size=round(dropout * workers), replace=False).tolist())
    return updates, [TRAIN_SIZE // workers] * workers, dropped


def timed(function, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.mean(seconds), result


def training_round_seconds(workers: int) -> float:
    """Mean seconds of the later rounds of a real in-process run (the first pays for warm-up)."""
    run = engine_for(TrainConfig(workers=workers, rounds=3)).run(load_mnist())
    return statistics.mean(r.seconds for r in run.history[1:])


def report_protocol(workers: int, dropout: float, parameters: int, repeats: int, round_seconds: float | None) -> None:
    updates, counts, dropped = synthetic_round(workers, parameters, dropout)
    keep = [k for k in range(workers) if k not in dropped]
    plain, _ = timed(lambda: fedavg(updates[keep], torch.tensor(counts)[keep]), repeats)
    secure, result = timed(lambda: secure_sum(updates, counts, dropped), repeats)
    assert isinstance(result, SecureAggregate)
    group = default_group_size(workers)
    print(
        f"{workers} workers, {len(dropped)} dropped after masking (group {group}, threshold "
        f"{default_threshold(group)}): secure_sum {secure:.3f} s vs plain weighted average {plain * 1e3:.2f} ms"
    )
    print("    per stage: " + ", ".join(f"{s} {result.seconds_per_stage[s]:.3f} s" for s in STAGES))
    if round_seconds is not None:
        added = secure / round_seconds
        target = TARGET_OVERHEAD.get(workers)
        verdict = f" (target at most +{target:.0%}: {'met' if added <= target else 'MISSED'})" if target else ""
        print(f"    adds {added:.1%} to a {round_seconds:.2f} s training round of {workers} workers{verdict}")
    plain_bytes = 4 * parameters
    per_worker = result.bytes_per_worker()
    masked_vector = result.bytes_sent["masked_input"].up // len(result.survivors)
    print(
        f"    bytes per worker (mean over all {workers}; dropped ones sent no masked vector): sent {per_worker.up:,}, "
        f"received {per_worker.down:,}; expansion {per_worker.up / plain_bytes:.2f}x sent, "
        f"{(per_worker.up + per_worker.down) / plain_bytes:.2f}x both ways, over a plain float32 update of "
        f"{plain_bytes:,}; the masked vector alone is {masked_vector:,} ({masked_vector / plain_bytes:.2f}x)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-training", action="store_true", help="do not measure a real training round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parameters = sum(p.numel() for p in build_model("crypto_cnn").parameters())
    print(
        f"crypto_cnn: {parameters:,} parameters; {os.cpu_count()} cores, one torch thread; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    for workers in args.workers:
        round_seconds = None if args.no_training else training_round_seconds(workers)
        for dropout in (0.0, args.dropout):
            report_protocol(workers, dropout, parameters, args.repeats, round_seconds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

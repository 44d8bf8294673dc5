"""Engine benchmark: wall time per round of the same run on each engine, side by side.

    python bench/bench_engines.py                      # 5 workers x 3 rounds on the full 60k images
    python bench/bench_engines.py --train-size 10000   # the same with 2,000 images per worker

For each engine it prints the start-up time (from the call to the first round's start), the first
round (which pays for lazy imports in fresh worker processes) and the mean of the later rounds, and
the overhead ratio of the later rounds over the in-process engine. Then it shows where a syft job's
time goes: every job is a new Python process, and this measures what such a process pays before it
trains. The machine's load average is printed too: other processes on a shared machine slow the
engines that run many processes more than the in-process one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from fed_core.config import TrainConfig  # noqa: E402
from fed_core.data import load_mnist  # noqa: E402
from fed_core.engines import ENGINES, engine_for  # noqa: E402
from fed_core.server import FederatedRun  # noqa: E402

# What a syft job process pays before it trains, measured in a fresh interpreter like the job's.
IMPORT_PROBE = """
import json, time
t0 = time.perf_counter(); import torch
t1 = time.perf_counter(); import torch._dynamo  # what torch.func's first grad call imports
t2 = time.perf_counter(); import syft  # the job's one syft import, to find its private file
t3 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "torch._dynamo (first torch.func grad)": t2 - t1, "syft": t3 - t2}))
"""


def timed_run(config: TrainConfig) -> tuple[FederatedRun, float]:
    """The run and its start-up seconds (call to the start of round 1)."""
    called = time.perf_counter()
    started: list[float] = []
    run = engine_for(config).run(load_mnist(), on_start=lambda run: started.append(time.perf_counter()))
    return run, started[0] - called


def job_import_costs() -> dict[str, float]:
    interpreter = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.perf_counter() - interpreter
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], check=True, capture_output=True, text=True).stdout
    return {"python start": interpreter, **json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    base = TrainConfig(workers=args.workers, rounds=args.rounds, train_size=args.train_size)
    print(
        f"{args.workers} workers x {args.rounds} rounds, {args.train_size} images, {os.cpu_count()} cores; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )

    later_rounds = {}
    for engine in args.engines:
        run, startup = timed_run(TrainConfig(**{**base.to_dict(), "engine": engine}))
        seconds = [r.seconds for r in run.history]
        later_rounds[engine] = statistics.mean(seconds[1:] or seconds)
        print(
            f"{engine:>9}: start-up {startup:5.1f} s | round 1 {seconds[0]:5.1f} s | later rounds "
            f"{later_rounds[engine]:5.2f} s | final accuracy {run.history[-1].test_accuracy:.2%}"
        )
    if "inprocess" in later_rounds:
        for engine in [e for e in later_rounds if e != "inprocess"]:
            print(
                f"overhead of {engine} over inprocess (later rounds): "
                f"{later_rounds[engine] / later_rounds['inprocess']:.1f}x"
            )

    costs = job_import_costs()
    per_job = sum(costs.values())
    print(
        "a syft job process before training: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in costs.items())
        + f"; {per_job:.1f} s in all, so {args.workers} concurrent jobs need at least "
        f"{args.workers * per_job / (os.cpu_count() or 1):.1f} s of a round on {os.cpu_count()} cores"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

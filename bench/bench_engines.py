"""Engine benchmark: wall time per round of the same run on each engine, side by side.

    python bench/bench_engines.py                      # 5 workers x 3 rounds on the full 60k images
    python bench/bench_engines.py --train-size 10000   # the same with 2,000 images per worker
    python bench/bench_engines.py --engines syft --rounds 8   # does a syft round stay as fast as rounds go by?

For each engine it prints the start-up time (from the call to the first round's start), the first
round and the mean of the later rounds, and the overhead ratio of the later rounds over the in-process
engine. It also prints the CPU seconds a later round costs in this process and in its child processes
(syft's warm workers, Flower's Ray workers): on a shared machine wall times depend on everyone else's
load, CPU seconds much less. For syft it prints the later-round time measured before warm workers
(every job a new Python process), the warm workers' memory, and what a job process pays before it
trains now (a standard-library-only Python start) against what a fresh training process would pay.
The machine's load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines import ENGINES, engine_for
from fed_core.engines.syft_engine import HANDOFF_FILE
from fed_core.engines.syft_warm_pool import SYFT_CONCURRENT_JOBS
from fed_core.federation.server import FederatedRun, RoundRecord

# Later rounds of the default run (5 workers x 3 rounds, 60,000 images) when every syft job was a new
# Python process (commit 1776d3b): wall seconds on the quiet reference machine (docs/engines.md), and
# CPU seconds measured with this script's meter, run on a checkout of that commit, on the loaded shared
# machine (load average 12; load inflates CPU seconds too: the same run with warm workers took 5.5 there).
SYFT_ROUND_BEFORE_WARM_WORKERS = 13.7
SYFT_ROUND_CPU_BEFORE_WARM_WORKERS = 31.8

# What a fresh training process pays before it trains, measured in a fresh interpreter.
IMPORT_PROBE = """
import json, time
t0 = time.perf_counter(); import torch
t1 = time.perf_counter(); import torch._dynamo  # what torch.func's first grad call imports
t2 = time.perf_counter(); import syft  # what the old job imported to find its private file
t3 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "torch._dynamo (first torch.func grad)": t2 - t1, "syft": t3 - t2}))
"""


@dataclass
class Meter:
    """CPU seconds of this process and of its child processes per round, and the peak memory of syft's warm workers.

    A child's CPU counts while it runs (psutil) and, once it ended and was waited for, in this process's
    RUSAGE_CHILDREN, so short job processes count as well as long-lived workers.
    """

    this_process: list[float] = field(default_factory=list)
    children: list[float] = field(default_factory=list)
    warm_workers: dict[int, dict[str, float]] = field(default_factory=dict)  # pid: peak rss/uss/pss in MB
    _last: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._last = self._cpu()

    def on_round(self, run: FederatedRun, record: RoundRecord) -> None:
        now = self._cpu()
        self.this_process.append(now[0] - self._last[0])
        self.children.append(now[1] - self._last[1])
        self._last = now

    def _cpu(self) -> tuple[float, float]:
        me = psutil.Process()
        running = 0.0
        for child in me.children(recursive=True):
            try:
                times = child.cpu_times()
                if "syft_warm_worker" in " ".join(child.cmdline()):
                    self._sample_memory(child)
            except psutil.Error:  # ended meanwhile
                continue
            running += times.user + times.system
        ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        times = me.cpu_times()
        return times.user + times.system, running + ended.ru_utime + ended.ru_stime

    def _sample_memory(self, process: psutil.Process) -> None:
        full = process.memory_full_info()
        peak = self.warm_workers.setdefault(process.pid, {"rss": 0.0, "uss": 0.0, "pss": 0.0})
        for name in peak:
            peak[name] = max(peak[name], getattr(full, name) / 2**20)


def timed_run(config: TrainConfig, meter: Meter) -> tuple[FederatedRun, float]:
    """The run and its start-up seconds (call to the start of round 1)."""
    called = time.perf_counter()
    started: list[float] = []

    def on_start(run: FederatedRun) -> None:
        started.append(time.perf_counter())
        meter.start()

    run = engine_for(config).run(load_mnist(), on_start=on_start, on_round=meter.on_round)
    return run, started[0] - called


def later(values: list[float]) -> float:
    return statistics.mean(values[1:] or values)


def fresh_process_costs() -> dict[str, float]:
    interpreter = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.perf_counter() - interpreter
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], check=True, capture_output=True, text=True).stdout
    return {"python start": interpreter, **json.loads(out)}


def handoff_start_seconds(repeats: int = 5) -> float:
    """What a syft job process pays now: bash, then the standard-library-only handoff (which exits at once here)."""
    env = {k: v for k, v in os.environ.items() if k != "SYFT_IS_IN_JOB"}  # so the handoff stops before connecting
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["bash", "-c", f"exec {sys.executable} -I -S {HANDOFF_FILE}"], env=env, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def print_syft_extras(args: argparse.Namespace, meter: Meter, later_round: float) -> None:
    if (args.workers, args.train_size) == (5, 60_000):
        cpu = later(meter.this_process) + later(meter.children)
        print(
            f"     syft, later rounds: {later_round:.2f} s and {cpu:.1f} CPU-s now; with a new process per job "
            f"{SYFT_ROUND_BEFORE_WARM_WORKERS:.1f} s on a quiet machine and {SYFT_ROUND_CPU_BEFORE_WARM_WORKERS:.1f} "
            "CPU-s"
        )
    for pid, peak in meter.warm_workers.items():
        print(
            f"     syft warm worker pid {pid}: peak RSS {peak['rss']:.0f} MB "
            f"(USS {peak['uss']:.0f} MB of its own, PSS {peak['pss']:.0f} MB)"
        )
    print(
        f"     syft: {len(meter.warm_workers)} warm worker(s) for {args.workers} owners "
        f"(SYFT_CONCURRENT_JOBS = {SYFT_CONCURRENT_JOBS})"
    )


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
        meter = Meter()
        run, startup = timed_run(TrainConfig(**{**base.to_dict(), "engine": engine}), meter)
        seconds = [r.seconds for r in run.history]
        later_rounds[engine] = later(seconds)
        print(
            f"{engine:>9}: start-up {startup:5.1f} s | round 1 {seconds[0]:5.1f} s | later rounds "
            f"{later_rounds[engine]:5.2f} s | final accuracy {run.history[-1].test_accuracy:.2%} | "
            f"CPU per later round: this process {later(meter.this_process):.2f} s, "
            f"child processes {later(meter.children):.2f} s"
        )
        if engine == "syft":
            cpu = [a + b for a, b in zip(meter.this_process, meter.children)]
            print("     syft rounds (s): " + ", ".join(f"{s:.2f}" for s in seconds))
            print("     syft rounds (CPU-s): " + ", ".join(f"{c:.2f}" for c in cpu))
            print_syft_extras(args, meter, later_rounds[engine])
    if "inprocess" in later_rounds:
        for engine in [e for e in later_rounds if e != "inprocess"]:
            print(
                f"overhead of {engine} over inprocess (later rounds): "
                f"{later_rounds[engine] / later_rounds['inprocess']:.1f}x"
            )

    costs = fresh_process_costs()
    print(
        "a fresh training process before it trains: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in costs.items())
        + f"; {sum(costs.values()):.1f} s in all. A syft job process now pays {handoff_start_seconds():.3f} s "
        "(bash and the standard-library handoff) and a warm worker trains it."
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

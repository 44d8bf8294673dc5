"""Training benchmarks: prints the figures quoted in the README.

python bench/bench_train.py                 # default run, centralized reference, scale, page rerun
python bench/bench_train.py --only scale    # one part: default, reference, scale, rerun, paper-round, memory,
                                            # allocator, threads, stacked
Every row prints its wall time, CPU time (user and sys) and peak resident memory together (bench/usage.py).
The FedAvg paper setting to 99% (rounds and curves): bench/bench_paper.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from bench_paper import PAPER
from usage import measured, run_measured

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist, normalize
from fed_core.engines import engine_for
from fed_core.federation.trainer import bytes_per_worker, workers_per_group
from fed_core.limits.budget import MB, env_name
from fed_core.limits.estimates import estimate_run_bytes, working_memory
from fed_core.limits.memory import CHOSEN, ENV
from fed_core.limits.threads import ENV as THREADS_ENV
from fed_core.models import new_model

THRESHOLDS = (0.97, 0.98)


def centralized(
    model_name: str, epochs: int, config: TrainConfig, evals_per_epoch: int = 4
) -> list[tuple[float, float]]:
    """Plain one-machine training with the workers' optimizer; returns (seconds, test accuracy) points."""
    data = load_mnist()
    x, y, tx = normalize(data.train_images), data.train_labels, normalize(data.test_images)
    model = new_model(model_name, config.init, config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    points, start = [], time.perf_counter()
    steps = -(-len(y) // config.batch_size)
    for _ in range(epochs):
        for step, batch in enumerate(torch.randperm(len(y), generator=gen).split(config.batch_size), 1):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            if step % (steps // evals_per_epoch) == 0 or step == steps:
                with torch.no_grad():
                    accuracy = (model(tx).argmax(1) == data.test_labels).float().mean().item()
                points.append((time.perf_counter() - start, accuracy))
    return points


def time_to(points: list[tuple[float, float]], threshold: float) -> str:
    hit = next((t for t, a in points if a >= threshold), None)
    return f"{hit:.1f} s" if hit is not None else "not reached"


def federated_points(config: TrainConfig) -> list[tuple[float, float]]:
    run = engine_for(config).run(load_mnist())
    return [(r.elapsed, r.test_accuracy) for r in run.history]


def bench_reference() -> None:
    print("== centralized reference (whole set as tensors, SGD momentum 0.9, batch 128)")
    for name, epochs, lr, clip in (("crypto_cnn", 2, 0.02, 1.0), ("relu_cnn", 1, 0.05, 10.0)):
        with measured() as usage:
            points = centralized(name, epochs, TrainConfig(lr=lr, clip_norm=clip))
        print(f"{name}: {points[-1][1]:.2%} after {epochs} epoch(s) in {points[-1][0]:.1f} s | {usage}")


def bench_default() -> None:
    config = TrainConfig()
    print(
        f"== default federated run: {config.workers} workers, {config.rounds} rounds, {config.partition}, "
        f"B={config.batch_size}, lr={config.lr}, E={config.local_epochs}"
    )
    with measured() as fed_usage:
        fed = federated_points(config)
    with measured() as cen_usage:
        cen = centralized(config.model, 5, config)
    for label, points, usage in (("federated", fed, fed_usage), ("centralized", cen, cen_usage)):
        print(
            f"{label:>11}: final {points[-1][1]:.2%} at {points[-1][0]:.1f} s; "
            + ", ".join(f"time to {t:.0%}: {time_to(points, t)}" for t in THRESHOLDS)
            + f" | {usage}"
        )


def timed_rounds(config: TrainConfig) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of every round; CPU time is what a quiet machine would take (one thread)."""
    times, last = [], [time.process_time()]

    def lap(run, record) -> None:
        now = time.process_time()
        times.append((record.seconds, now - last[0]))
        last[0] = now

    engine_for(config).run(load_mnist(), on_start=lambda run: last.__setitem__(0, time.process_time()), on_round=lap)
    return times


def bench_scale() -> None:
    print("== scale: same 60k examples held by 10 vs 100 workers (C=1, E=1, B=32, 2 rounds; second round)")
    # Training and aggregation first; contribution scores grow with the workers by design (Shapley's coalitions).
    for scoring, subset in (("no contribution scores", 0), ("leave-one-out and Shapley on 1,000 images", 1000)):
        seconds = {}
        for workers in (10, 100):
            config = TrainConfig(workers=workers, rounds=2, batch_size=32, contribution_subset=subset)
            with measured() as usage:
                wall, cpu = timed_rounds(config)[-1]
            seconds[workers] = (wall, cpu)
            print(
                f"{workers:>3} workers, {scoring}: {wall:.2f} s per round (process CPU {cpu:.2f} s) | "
                f"both rounds: {usage}"
            )
        wall_ratio, cpu_ratio = seconds[100][0] / seconds[10][0], seconds[100][1] / seconds[10][1]
        print(f"ratio 100/10, {scoring}: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU")


def bench_paper_round() -> None:
    """One round of the FedAvg paper's setting: 10 sampled workers x 5 epochs x 600 images, fedavg_cnn, B=10."""
    print("== paper round: 100 workers, C=0.1, E=5, B=10, fedavg_cnn (2 rounds, no leave-one-out scoring)")
    config = replace(PAPER, rounds=2)
    with measured() as usage:
        rounds = timed_rounds(config)
    for i, (wall, cpu) in enumerate(rounds, 1):
        print(f"round {i}: {wall:.1f} s wall, process CPU {cpu:.1f} s (threads: {torch.get_num_threads()})")
    print(f"both rounds: {usage}")


def bench_page_rerun() -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py").run()
    next(w for w in at.number_input if w.label == "Rounds").set_value(30)
    next(w for w in at.button if w.label == "Start").click()
    at.run()
    job = at.session_state["job"]
    durations = []
    with measured() as usage:
        while not job.snapshot().finished and len(durations) < 40:
            start = time.perf_counter()
            at.run()
            durations.append(time.perf_counter() - start)
            time.sleep(0.2)
        job.stop()
        job.join()
    print(
        f"== Train page rerun during training (AppTest, {len(durations)} reruns): "
        f"median {1000 * statistics.median(durations):.0f} ms, max {1000 * max(durations):.0f} ms | "
        f"reruns and run together: {usage}"
    )


def bench_memory() -> None:
    """100 workers of the paper's CNN at batch 1024 (all at once would need ~85 GB): trained in budget-sized groups."""
    config = TrainConfig(
        workers=100, local_epochs=1, batch_size=1024, model="fedavg_cnn", rounds=1, contribution_subset=100
    )
    os.environ.setdefault(env_name("training_memory_mb"), "3000")  # a local user's raised budget
    working = working_memory(config)
    group = workers_per_group(config.model, config.batch_size, working)
    print(
        f"== memory: 100 workers, fedavg_cnn, B=1024, 1 round; {bytes_per_worker(config.model, 1024) / 2**20:.0f} MiB "
        f"per worker, {os.environ[env_name('training_memory_mb')]} MB budget "
        f"({working / 2**20:.0f} MiB working memory): groups of {group}; "
        f"estimate {estimate_run_bytes(config) / MB:.0f} MB"
    )
    before = psutil.Process().memory_info().rss
    with measured() as usage:
        wall, cpu = timed_rounds(config)[-1]
    print(
        f"round: {wall:.1f} s wall, process CPU {cpu:.1f} s; the run added {(usage.peak_rss - before) / MB:.0f} MB "
        f"at peak | {usage}"
    )


ALLOCATOR_COMMANDS = {
    "train --workers 10 --rounds 6": ["-m", "fed_core", "train", "--workers", "10", "--rounds", "6"],
    "encrypted-eval --scheme mpc --n 10000": [
        *("-m", "fed_core", "encrypted-eval", "--model", "assets/pretrained_crypto_cnn.pt"),
        *("--scheme", "mpc", "--n", "10000"),
    ],
}


def bench_allocator(repeats: int = 2) -> None:
    """The CLI's commands in fresh processes, the chosen allocator setting against glibc's defaults, interleaved.

    Interleaved so that other load on the machine hits every setting alike; the last line of each command's
    output (accuracy, images/s) shows the settings compute the same thing.
    """
    settings = ("glibc", CHOSEN, "mmap-1mb")
    print(f"== allocator ({ENV}): {', '.join(settings)}; {repeats} runs each, interleaved; torch threads as set")
    for label, args in ALLOCATOR_COMMANDS.items():
        for _ in range(repeats):
            for setting in settings:
                usage, out = run_measured(args, {ENV: setting})
                print(f"{label} | {setting:>9} | {usage} | {out.strip().splitlines()[-1]}", flush=True)


CLI = ("-m", "fed_core")
MODEL = ("--model", "assets/pretrained_crypto_cnn.pt")
THREAD_PATHS = {
    "grouped training (10 workers, 2 rounds, no scoring)": [
        *(*CLI, "train", "--workers", "10", "--rounds", "2", "--contribution-subset", "0")
    ],
    "the same with leave-one-out and Shapley scoring": [*(*CLI, "train", "--workers", "10", "--rounds", "2")],
    "DP-SGD (5 workers, 1 round, no scoring)": [
        *(*CLI, "train", "--dp", "example", "--rounds", "1", "--contribution-subset", "0")
    ],
    "MPC, 10k test images in one process": [*(*CLI, "encrypted-eval", *MODEL, "--scheme", "mpc", "--n", "10000")],
    "HE, 20 test images": [*(*CLI, "encrypted-eval", *MODEL, "--scheme", "he", "--n", "20")],
}


def bench_threads() -> None:
    """Each hot path at 1 and 2 torch threads (FEDMNIST_TORCH_THREADS), interleaved, in fresh processes.

    Scoring's own cost is the difference of the first two rows. CPU time is what the path takes from the
    machine's other users; a second thread pays only if it cuts wall time by more than it adds CPU time.
    """
    print(f"== threads per hot path ({THREADS_ENV}), fresh processes, interleaved")
    for label, args in THREAD_PATHS.items():
        for threads in ("1", "2"):
            usage, out = run_measured(args, {THREADS_ENV: threads, "OMP_NUM_THREADS": threads})
            print(f"{label} | {threads} thread(s) | {usage} | {out.strip().splitlines()[-1]}", flush=True)


STACKED_SHAPES = (("crypto_cnn", 5, 128), ("crypto_cnn", 80, 32), ("relu_cnn", 5, 128), ("fedavg_cnn", 10, 50))


def bench_stacked(repeats: int = 2) -> None:
    """The trainer's stacked pass against torch.func's vmap, the pass it replaced, in fresh processes, interleaved.

    Each process builds K workers' models and times 40 gradient steps (bench/stacked_pass.py); its peak RSS
    includes what its imports keep resident (torch._dynamo, for vmap's gradients).
    """
    print("== stacked gradients: the trainer's plain-autograd pass vs torch.func's vmap, fresh processes, 1 thread")
    for model, k, b in STACKED_SHAPES:
        for _ in range(repeats):
            for way in ("vmap", "stacked"):
                args = ["bench/stacked_pass.py", way, model, str(k), str(b)]
                usage, out = run_measured(args, {"OMP_NUM_THREADS": "1"})
                print(f"{model}, {k} workers x B={b} | {way:>7} | {out.strip()} | process: {usage}", flush=True)


PARTS = {
    "default": bench_default,
    "reference": bench_reference,
    "scale": bench_scale,
    "paper-round": bench_paper_round,
    "rerun": bench_page_rerun,
    "memory": bench_memory,
    "allocator": bench_allocator,
    "threads": bench_threads,
    "stacked": bench_stacked,
}


LONG_PARTS = ("paper-round", "memory", "allocator", "threads", "stacked")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=list(PARTS), help=f"run one part (default: all but {', '.join(LONG_PARTS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared machine: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, part in PARTS.items():
        if args.only == name or (args.only is None and name not in LONG_PARTS):
            part()


if __name__ == "__main__":
    main()

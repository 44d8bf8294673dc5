"""Threads per hot path, and a training thread that yields the cores to interactive work, on a shared server.

``torch.set_num_threads`` sizes the OpenMP team of the calling thread (torch's OpenMP backend keeps the setting
per thread), so each path sets it where it runs: the training thread (grouped training, DP-SGD and Shapley
scoring run there, one after another) and MPC's evaluation (fed_core.mpc.protocol.single_threaded, and each party's
process). HE's work is SEAL's, single-threaded C++ that torch's setting does not reach; its parallelism is its
server processes (fed_core.encrypted.he, ``HeScheme.workers``).

A second thread only pays where it buys speed: where it does not, it takes the core from another visitor, and
two OpenMP threads on a busy machine spin-wait for each other. Each path's count below is what
``python bench/bench_train.py --only threads`` measured (wall and CPU at 1 and 2 threads, interleaved in fresh
processes); ``FEDMNIST_TORCH_THREADS`` overrides every path, so the benchmark (and anyone) can re-measure.
"""

from __future__ import annotations

import os
import sys
import threading

ENV = "FEDMNIST_TORCH_THREADS"

# `python bench/bench_train.py --only threads` on the 2-core machine (load average 2-4 from other sessions), each
# path at 1 vs 2 threads, wall and CPU (user + sys) seconds of the whole command. The second thread bought speed on
# no path; under heavier load (average 10-17) the gaps were as wide (DP-SGD: 161 s / 16 CPU-s vs 918 s / 115 CPU-s).
#   grouped training, 10 workers, 2 rounds, no scoring:  8.6 s /  8.6 CPU-s  vs  42.7 s / 43.2 CPU-s
#   the same with leave-one-out and Shapley scoring:   10.2 s / 10.0 CPU-s  vs  27.0 s / 26.2 CPU-s
#   DP-SGD, 5 workers, 1 round:                          24.0 s / 16.4 CPU-s  vs  92.8 s / 62.1 CPU-s
#   MPC, 10k test images in one process:                  7.8 s /  5.1 CPU-s  vs  12.7 s / 11.4 CPU-s
#   HE, 20 test images (SEAL; torch's threads do not reach it): 5.0 s / 4.7 CPU-s vs 4.8 s / 4.7 CPU-s
PATH_THREADS = {
    "training": 1,  # grouped training, DP-SGD and Shapley scoring, which run one after another in one thread
    "mpc": 1,  # fed_core.mpc.protocol.single_threaded and each party's process (fed_core.mpc.processes)
}

# Niceness of a training thread: interactive requests (a Draw classification, a page rerun) run at 0 and get the
# cores first; training takes what they leave. Linux only, where niceness is per thread. FEDMNIST_TRAINING_NICE
# changes it (0: train at the requests' priority, as before), for bench/bench_load.py to compare.
TRAINING_NICE = 10
NICE_ENV = "FEDMNIST_TRAINING_NICE"


def threads_for(path: str) -> int:
    """Torch (or TenSEAL) threads for ``path`` (a key of :data:`PATH_THREADS`), or ``FEDMNIST_TORCH_THREADS``."""
    text = os.environ.get(ENV)
    if text is None:
        return PATH_THREADS[path]
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV} must be a whole number of threads, at least 1, got {text!r}.")
    return int(text)


def training_nice() -> int:
    """The training thread's niceness: ``FEDMNIST_TRAINING_NICE`` (0-19) if set, else :data:`TRAINING_NICE`."""
    text = os.environ.get(NICE_ENV)
    if text is None:
        return TRAINING_NICE
    if not text.isdigit() or int(text) > 19:
        raise ValueError(f"{NICE_ENV} must be a whole number from 0 to 19, got {text!r}.")
    return int(text)


def lower_this_threads_priority(nice: int | None = None) -> bool:
    """Give the calling thread (and the threads it starts afterwards, such as OpenMP's team) the niceness
    ``nice`` (default: :func:`training_nice`), never raising its priority.

    Linux keeps a niceness per thread (os.setpriority on the thread's id); elsewhere it would lower the whole
    process, so it does nothing there and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    nice = training_nice() if nice is None else nice
    os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    return True

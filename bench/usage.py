"""Time and memory of one benchmark row, always together: wall, CPU (user and sys) and peak resident memory.

A row is either a command in its own process (:func:`run_measured`: the kernel's own account of the child,
os.wait4, so its peak is the row's alone) or a block of this process (:func:`measured`: CPU from getrusage,
the peak sampled every 20 ms). Sys time is where an allocator that maps and unmaps memory shows its cost: every
freshly mapped page is a page fault.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


@dataclass
class Usage:
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    peak_rss: float = 0.0  # bytes

    def __str__(self) -> str:
        return (
            f"{self.wall:.1f} s wall, CPU {self.user:.1f} s user + {self.sys:.1f} s sys "
            f"(sys/user {self.sys / max(self.user, 1e-9):.0%}), peak RSS {self.peak_rss / MB:,.0f} MB"
        )


def run_measured(args: list[str], env: dict[str, str] | None = None) -> tuple[Usage, str]:
    """Run ``python args...`` from the project root in a fresh process; its usage and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = process.stdout.read()  # to the end first: a full pipe would block the child
    _, status, rusage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"python {' '.join(args)} exited with {process.returncode}")
    # ru_maxrss is in kB on Linux.
    return Usage(time.perf_counter() - started, rusage.ru_utime, rusage.ru_stime, rusage.ru_maxrss * 1024), out


@contextmanager
def measured() -> Iterator[Usage]:
    """Usage of the block, this process (all its threads); the fields are filled in when the block ends."""
    usage, process, done = Usage(), psutil.Process(), threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            usage.peak_rss = max(usage.peak_rss, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        done.set()
        sampler.join()
        after = resource.getrusage(resource.RUSAGE_SELF)
        usage.wall = time.perf_counter() - started
        usage.user, usage.sys = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        usage.peak_rss = max(usage.peak_rss, process.memory_info().rss)

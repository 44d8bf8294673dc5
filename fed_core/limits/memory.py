"""How a long-lived process gives the memory torch frees back to the system without paying for it in time.

glibc serves a block above its mmap threshold as its own mapping, unmapped when freed, and smaller ones from its
heaps, which keep freed memory for reuse. The threshold starts at 128 kB and rises (up to 32 MB) each time a
mapped block is freed, so torch's 1-30 MB temporaries end up on the heaps, where freed fragments stay resident;
and every thread that allocates gets a heap (an arena) of its own, up to 8 per core, each keeping its peak.

This module's first answer fixed the threshold at 1 MB: every large tensor its own mapping, returned when freed.
It bounded memory but every round then mapped and page-faulted some 4 GB afresh: ``train --workers 10 --rounds 6``
took 1.8x the wall time of glibc's defaults, with 11x the sys time, and MPC ran at half speed.

The setting chosen (:data:`CHOSEN`) keeps glibc's thresholds, so hot loops reuse their heap blocks, and gives
memory back where it is cheap: :func:`give_back` (malloc_trim) after a round and after an encrypted evaluation
or attack, and two arenas at most, so a server's request threads share their heaps instead of each keeping its
own. ``python bench/bench_train.py --only allocator`` prints each setting's wall, CPU user and sys, and peak RSS
in the same run. Measured there (2-core machine, load average about 2 from other sessions, two runs each):

- ``train --workers 10 --rounds 6``: glibc 19.7-20.2 s, sys 1.1-1.2 s, peak 1.01-1.03 GB; this setting 20.7-21.5 s,
  sys 1.1-1.6 s (under 8% of user), peak 1.00-1.04 GB; the 1 MB threshold 32-37 s, sys 12-16 s, peak 0.94 GB.
- ``encrypted-eval --scheme mpc --n 10000``: glibc 5,666-5,732 images/s; this setting 5,612-5,991; 1 MB 2,041-2,493.
- Shapley scoring of 80 workers, three calls in one process (what the 1 MB threshold was for): the peak grew by
  31, 49, then 196 MB with glibc alone; by 47, 82 and 73 MB here, trimmed between calls; by 55, 38 and 38 MB at
  1 MB, at 4.2 s of sys time per call against 0.1 s.

One process's peak stays about 0.08 GB above the 1 MB threshold's: inside one scoring pass, freed blocks stay on
the heap until the pass ends. Trimming inside the pass would page-fault them afresh, the cost this setting avoids.

``FEDMNIST_ALLOCATOR`` (a name of :data:`SETTINGS`) overrides the choice for a process, so the benchmark can
compare settings in fresh processes and anyone can re-measure, e.g. ``FEDMNIST_ALLOCATOR=glibc python -m
fed_core train``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's parameter numbers, from glibc's malloc.h
MiB = 1 << 20
ENV = "FEDMNIST_ALLOCATOR"


@dataclass(frozen=True)
class Setting:
    mmap_threshold: int | None = None  # bytes; None: glibc's dynamic threshold
    trim_threshold: int | None = None  # bytes; None: glibc's (twice the mmap threshold)
    arena_max: int | None = None  # None: glibc's (8 per core)
    trim_after_work: bool = False  # give_back() returns free heap pages; otherwise it does nothing


SETTINGS = {
    "glibc": Setting(),
    "mmap-1mb": Setting(mmap_threshold=MiB, trim_threshold=16 * MiB),  # the first answer, to measure against
    "trim": Setting(arena_max=2, trim_after_work=True),
}
CHOSEN = "trim"


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def allocator_setting() -> str:
    """The setting in force: ``FEDMNIST_ALLOCATOR`` if set, else :data:`CHOSEN`."""
    name = os.environ.get(ENV, CHOSEN)
    if name not in SETTINGS:
        raise ValueError(f"{ENV} must be one of {', '.join(SETTINGS)}, got {name!r}.")
    return name


def release_freed_memory() -> bool:
    """Set this process's allocator, once at start; False where the C library is not glibc (nothing to do)."""
    libc = _libc()
    if libc is None:
        return False
    setting = SETTINGS[allocator_setting()]
    options = (
        (M_MMAP_THRESHOLD, setting.mmap_threshold),
        (M_TRIM_THRESHOLD, setting.trim_threshold),
        (M_ARENA_MAX, setting.arena_max),
    )
    return all(libc.mallopt(option, value) for option, value in options if value is not None)


def give_back() -> None:
    """Return the heaps' free pages to the system (malloc_trim): after a round, an evaluation, an attack.

    About 50 ms when it releases 200 MB, under 1 ms when there is nothing to release: cheap at the end of a
    piece of work, where the hot loop that would reuse the pages is over.
    """
    libc = _libc()
    if libc is not None and SETTINGS[allocator_setting()].trim_after_work:
        libc.malloc_trim(0)

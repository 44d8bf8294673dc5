"""What stands between a visitor and the machine: a run refused with what to change, and server-wide gates.

``budget_problems`` refuses a run whose estimates (estimates.py, config.estimate_seconds) exceed this server's
budget (budget.py) and names the nearest settings that fit; a :class:`Gate` lets a few heavy tasks run at once
across every session; a :class:`SessionCache` keeps costly per-session objects (HE keys) only while they are used.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from fed_core.config import LIMITS, TrainConfig, estimate_seconds
from fed_core.limits.budget import MB, Budget, duration_text
from fed_core.limits.estimates import estimate_run_bytes
from fed_core.settings import settings_of

BATCH_SIZES = tuple(2**i for i in range(LIMITS["batch_size"][1].bit_length()))  # the sizes a refusal suggests


def setting_label(config: TrainConfig, name: str) -> str:
    """What the Train page calls a setting, from the declaration its field carries: a refusal names what to change."""
    return settings_of(type(config))[name].label


def _cheaper_values(config: TrainConfig, name: str) -> list:
    """Values of one setting that cost less than the current one, nearest first."""
    current = getattr(config, name)
    if name == "fraction":
        return [round(v / 100, 2) for v in range(round(current * 100) - 5, 0, -5)]
    if name == "batch_size":
        return [b for b in reversed(BATCH_SIZES) if b < current]
    return list(range(current - 1, int(settings_of(type(config))[name].valid.low) - 1, -1))


def _fixes(config: TrainConfig, fits: Callable[[TrainConfig], bool], names: tuple[str, ...]) -> list[str]:
    """For each setting, the nearest value that makes the run fit on its own (settings that cannot are left out)."""
    found = []
    for name in names:
        for value in _cheaper_values(config, name):
            if fits(replace(config, **{name: value})):
                found.append(f"{setting_label(config, name)} to {value}")
                break
    return found


def _fix_text(fixes: list[str], fallback: str) -> str:
    return "lower " + ", or ".join(fixes) if fixes else fallback


def budget_problems(config: TrainConfig, budget: Budget) -> list[str]:
    """Why this server will not run ``config`` and what to lower; empty if it fits.

    Time is checked for every engine (the estimate is the in-process one: syft and Flower take longer); memory
    only for the in-process engine, whose workers live in this server's process.
    """
    out = []
    seconds = estimate_seconds(config)
    if seconds > budget.run_seconds:
        fixes = _fixes(config, lambda c: estimate_seconds(c) <= budget.run_seconds, ("rounds", "local_epochs"))
        both = f"{setting_label(config, 'rounds')} and {setting_label(config, 'local_epochs')}"
        out.append(
            f"This run would take about {duration_text(seconds)}; this server allows "
            f"{duration_text(budget.run_seconds)} per run: "
            f"{_fix_text(fixes, f'lower {both}')}."
        )
    if config.engine == "inprocess":
        size = estimate_run_bytes(config, budget)
        if size > budget.training_memory_bytes:
            fraction = setting_label(config, "fraction")
            fixes = _fixes(
                config,
                lambda c: estimate_run_bytes(c, budget) <= budget.training_memory_bytes,
                ("batch_size", "fraction"),
            )
            out.append(
                f"This run would need about {size / MB:,.0f} MB of memory; this server allows "
                f"{budget.training_memory_mb:,} MB per run: "
                f"{_fix_text(fixes, f'lower {fraction} or choose a smaller model')}."
            )
    return out


class Gate:
    """At most ``capacity`` heavy jobs at once (e.g. encrypted evaluations), shared by every session.

    It remembers when each holder expects to finish, so a refused caller can be told how long to wait.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots = threading.BoundedSemaphore(capacity)
        self._lock = threading.Lock()
        self._ends: dict[int, float] = {}
        self._tickets = itertools.count(1)

    def acquire(self, expected_seconds: float, timeout: float = 0.0) -> int | None:
        """A ticket to pass to :meth:`release`, or None if no slot freed up within ``timeout`` seconds."""
        if not self._slots.acquire(timeout=timeout):
            return None
        with self._lock:
            ticket = next(self._tickets)
            self._ends[ticket] = time.monotonic() + expected_seconds
        return ticket

    def release(self, ticket: int) -> None:
        with self._lock:
            del self._ends[ticket]
        self._slots.release()

    def wait_estimate(self) -> float:
        """Seconds until the soonest holder expects to finish (0 if a slot is free or overdue)."""
        with self._lock:
            if len(self._ends) < self.capacity:
                return 0.0
            return max(0.0, min(self._ends.values()) - time.monotonic())


class SessionCache:
    """Costly per-session objects (a visitor's HE keys, about 160 MB) that the server may take back.

    An entry unused for ``idle_seconds`` is dropped, and when ``capacity`` sessions hold one, a new one pushes
    out the least recently used. A session whose entry went finds None and makes a new one. Every access sweeps
    the idle entries of all sessions, so the keys of a visitor who left go when anyone next uses the cache, or
    when :meth:`sweep_forever` (in a daemon thread) next wakes.
    """

    def __init__(self, idle_seconds: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds, self.capacity = idle_seconds, capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict]] = {}

    def get(self, owner: str) -> dict | None:
        """The owner's entry, marked as used now; None if it has none or it was taken back."""
        with self._lock:
            self._sweep_locked()
            if owner not in self._entries:
                return None
            values = self._entries[owner][1]
            self._entries[owner] = (self._clock(), values)
            return values

    def put(self, owner: str, values: dict) -> None:
        with self._lock:
            self._sweep_locked()
            self._entries.pop(owner, None)
            while len(self._entries) >= self.capacity:
                del self._entries[min(self._entries, key=lambda o: self._entries[o][0])]
            self._entries[owner] = (self._clock(), values)

    def sweep(self) -> None:
        with self._lock:
            self._sweep_locked()

    def sweep_forever(self, interval: float) -> None:
        """Sweep every ``interval`` seconds; run it in a daemon thread."""
        while True:
            time.sleep(interval)
            self.sweep()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _sweep_locked(self) -> None:
        now = self._clock()
        for owner in [o for o, (used, _) in self._entries.items() if now - used > self.idle_seconds]:
            del self._entries[owner]

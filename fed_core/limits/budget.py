"""How much of the machine one visitor may use: runs, time, memory, encrypted evaluations and idle keys.

The app is shared through a link: strangers on a 2-core instance with about 2.5 GB (Streamlit Community
Cloud) must not be able to starve each other. Every limit lives here, with the estimators that check a run
against them. A local user raises them with environment variables named ``FEDMNIST_<FIELD>`` (upper case),
or with the same names at the top level of ``.streamlit/secrets.toml``, which Streamlit copies into the
environment at start-up. Nothing here imports Streamlit.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from fed_core.config import LIMITS, TrainConfig, estimate_seconds
from fed_core.federation.trainer import EVAL_CHUNK_BYTES, bytes_per_worker, workers_per_group
from fed_core.models import MODELS
from fed_core.settings import settings_of
from fed_core.vocabulary import UserError

ENV_PREFIX = "FEDMNIST_"
MB = 1_000_000

# Approved syft training jobs running at once on this server, all data owners together. Each job is a new
# Python process that imports torch: about 4 s of a core and 530 MB resident (measured here with the CUDA wheel),
# so a second one at once would not fit beside two runs in 2.5 GB.
SYFT_OWNER_JOBS_AT_ONCE = 1


class BudgetError(UserError, ValueError):
    """A budget setting from the environment is not a positive number; the message names the variable."""


@dataclass(frozen=True)
class Budget:
    """Limits for one server. The defaults fit 2 cores and about 2.5 GB with two runs and a few visitors."""

    runs_per_server: int = 2  # training runs at once, all sessions together
    runs_per_session: int = 1  # training runs at once started by one browser
    run_seconds: float = 600.0  # estimated wall time a run may take (fed_core.config.estimate_seconds)
    run_margin_seconds: float = 300.0  # a run still going this long past run_seconds is stopped (job.JobSlots)
    approval_seconds: float = 180.0  # how long a syft run waits for an owner to approve a job before it ends
    training_memory_mb: int = 400  # peak memory one in-process run may add to the server
    heavy_tasks_at_once: int = 1  # Encrypted Test evaluations and What leaks attacks at once, all sessions
    heavy_task_wait_seconds: float = 20.0  # how long a request waits for that slot before it is refused
    # Few enough that HE encrypts one image at a time (about 200 MB, 0.35 s an image): packing one image per slot
    # needs about 1.7 GB more however few images a pass holds (measured with 512), which a 2.5 GB server lacks.
    he_images_per_request: int = 100
    mpc_images_per_request: int = 10_000  # the whole test set: MPC does thousands of images a second
    he_key_idle_seconds: float = 600.0  # a session's HE keys are released after this long unused
    he_key_sets: int = 2  # sessions holding HE keys at once (about 160 MB each); the least recently used goes

    @property
    def run_deadline_seconds(self) -> float:
        """How long any run may hold a training slot: the time budget plus the margin for slow estimates."""
        return self.run_seconds + self.run_margin_seconds

    @property
    def training_memory_bytes(self) -> int:
        return self.training_memory_mb * MB


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_budget(environ: Mapping[str, str] | None = None) -> Budget:
    """The defaults, overridden by any ``FEDMNIST_<FIELD>`` variable; refuses values that are not positive."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Budget):
        text = environ.get(env_name(f.name))
        if text is None:
            continue
        kind = type(f.default)  # int or float
        try:
            value = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise BudgetError(f"{env_name(f.name)} must be {expected}, got {text!r}.") from None
        if not (math.isfinite(value) and value > 0):
            raise BudgetError(f"{env_name(f.name)} must be positive, got {text!r}.")
        values[f.name] = value
    return Budget(**values)


# --- memory of an in-process run ---------------------------------------------------------------------------
# The trainer trains workers in groups and the evaluator scores models in chunks, both sized from the training
# memory budget (trainer.workers_per_group, server.Evaluator), so a run's memory is bounded
# by the budget whatever its workers and batch size, unless one worker alone does not fit. A "scored" example
# is one image through one model without gradients, measured on the 2-core machine from the growth of peak RSS
# (one torch thread); ``python bench/bench_app.py estimator`` compares the estimate with whole runs.
BYTES_PER_SCORED_EXAMPLE = {"crypto_cnn": 4_200, "relu_cnn": 120_000, "fedavg_cnn": 240_000}
TEST_SET_BYTES = 10_000 * 28 * 28 * 4  # the normalised test set the evaluator keeps


@functools.cache
def _parameters(model: str) -> int:
    return sum(p.numel() for p in MODELS[model]().parameters())


def sampled_workers(config: TrainConfig) -> int:
    """Workers sampled in a round (fed_core.federation.server.sample_workers takes this many, before dropout)."""
    return max(1, round(config.fraction * config.workers))


def held_bytes(config: TrainConfig) -> int:
    """What a run holds whatever it does: the normalised test set, and the round's updates with their average."""
    return TEST_SET_BYTES + 2 * sampled_workers(config) * 4 * _parameters(config.model)


def working_memory(config: TrainConfig, budget: Budget | None = None) -> int:
    """Bytes the trainer's worker groups and the evaluator's chunks may use: the run's budget less what it holds."""
    return max(1, training_memory_budget(budget) - held_bytes(config))


def estimate_run_bytes(config: TrainConfig, budget: Budget | None = None) -> int:
    """Peak memory an in-process run adds to the server: what it holds, plus the largest of its three phases.

    The phases: local training (as many workers at once as the working memory holds, at least one);
    contribution scoring (the round's model with and without each update, and Shapley's coalitions, on
    ``contribution_subset`` images, as many models at once as the working memory holds); and evaluation on
    the test set in cache-sized chunks.
    """
    working = working_memory(config, budget)
    one_worker = bytes_per_worker(config.model, config.batch_size)
    training = min(sampled_workers(config), workers_per_group(config.model, config.batch_size, working)) * one_worker
    one_model = config.contribution_subset * BYTES_PER_SCORED_EXAMPLE[config.model]
    scoring = max(one_model, min(working, (sampled_workers(config) + 1) * one_model))
    return held_bytes(config) + max(training, scoring, EVAL_CHUNK_BYTES)


def largest_batch(config: TrainConfig, budget: Budget | None = None) -> int:
    """The largest batch size at which one worker of ``config`` fits the run's working memory (at least 1).

    This, not a fixed number, caps the batch: workers train in groups that fit the budget, so only one worker
    alone can overflow it. Binary search: a worker's bytes grow with its batch (trainer.bytes_per_worker).
    """
    working = working_memory(config, budget)
    low, high = 1, LIMITS["batch_size"][1]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if bytes_per_worker(config.model, middle) <= working else (low, middle - 1)
    return low


def batch_problem(config: TrainConfig, budget: Budget | None = None) -> str | None:
    """Why one worker at ``config.batch_size`` does not fit the memory budget, with the largest batch that does."""
    largest = largest_batch(config, budget)
    if config.batch_size <= largest:
        return None
    one_worker = bytes_per_worker(config.model, config.batch_size)
    return (
        f"batch size {config.batch_size:,} needs about {one_worker / MB:,.0f} MB "
        f"for one {config.model} worker; the memory budget ({env_name('training_memory_mb')}="
        f"{training_memory_budget(budget) // MB:,} MB) allows batch sizes up to {largest:,}: lower the batch size "
        f"or raise the budget."
    )


def training_memory_budget(budget: Budget | None = None) -> int:
    """Bytes one training run may use on this server (FEDMNIST_TRAINING_MEMORY_MB, 400 MB by default)."""
    return (budget or load_budget()).training_memory_bytes


# --- refusing a run that does not fit, and saying what to change ---------------------------------------------

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


def duration_text(seconds: float) -> str:
    """A duration as a page says it: seconds up to 90, whole minutes beyond."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


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


# --- server-wide gates ------------------------------------------------------------------------------------------


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

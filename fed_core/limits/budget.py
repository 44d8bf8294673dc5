"""How much of the machine one visitor may use: runs, time, memory, encrypted evaluations and idle keys.

The app is shared through a link: strangers on a 2-core instance with about 2.5 GB (Streamlit Community
Cloud) must not be able to starve each other. Every limit lives here; the estimates that check a run against
them are in estimates.py, and what refuses a run or a request in gates.py. A local user raises them with
environment variables named ``FEDMNIST_<FIELD>`` (upper case), or with the same names at the top level of
``.streamlit/secrets.toml``, which Streamlit copies into the environment at start-up. Nothing here imports
Streamlit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

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


def training_memory_budget(budget: Budget | None = None) -> int:
    """Bytes one training run may use on this server (FEDMNIST_TRAINING_MEMORY_MB, 400 MB by default)."""
    return (budget or load_budget()).training_memory_bytes


def duration_text(seconds: float) -> str:
    """A duration as a page says it: seconds up to 90, whole minutes beyond."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"

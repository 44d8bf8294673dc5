"""What a syft data owner lets a job do to its data: its own limits on the local settings the aggregator sends.

The owner's policy (syft_engine.follows_policy) fixes *what code* runs, byte for byte, but the round's local
settings travel in the job's ``job.json``, which the aggregator writes. An aggregator that forges it could ask
for a thousand epochs (the owner's machine busy for hours), a batch of one with a huge learning rate, or a
malformed number. So the owner checks every job's settings against its own :class:`OwnerLimits` before it
approves, or asks a person to approve, and rejects the job with the reason otherwise; syft shares the
rejection and its reason with the aggregator. The time limit is also what syft's job runner enforces: a job
still running after ``max_seconds`` is killed, and with it the owner's training.

The defaults are the app's own bounds (fed_core.config), so every run the app can start passes; a real owner
sets tighter ones in the code that starts its job loop. An owner that joined a run under example-level DP also
holds every job to that DP (:meth:`OwnerLimits.for_run`): a job.json that asks for less noise, a larger clip or
no DP at all would spend the owner's privacy behind its back, and is rejected like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fed_core.config import LIMITS, SETTINGS, TrainConfig, estimate_seconds
from fed_core.engines.worker_job import LocalTask
from fed_core.limits.budget import duration_text
from fed_core.models import MODELS
from fed_core.privacy.policy import privacy_for
from fed_core.vocabulary import LocalSettings


@dataclass(frozen=True)
class OwnerLimits:
    """The local settings an owner accepts; a job outside any of them is rejected."""

    max_epochs: int = LIMITS["local_epochs"][1]
    min_batch_size: int = LIMITS["batch_size"][0]
    max_batch_size: int = LIMITS["batch_size"][1]
    max_lr: float = 10.0  # fed_core.config's learning-rate bound, (0, 10]
    max_seconds: float = 3600.0  # estimated local training time of one job; also the runner's kill time-out
    min_dp_noise: float = 0.0  # example-level DP the owner requires: noise multiplier at least this (0: none)
    max_dp_clip: float = math.inf  # and a per-example clip norm at most this

    @classmethod
    def for_run(cls, config: TrainConfig) -> OwnerLimits:
        """The app's bounds, plus the example-level DP the run promised the owners when they joined it."""
        promised = privacy_for(config).local_dp  # what the run's privacy makes every worker's training do
        if promised.clip <= 0:  # no DP-SGD in the workers
            return cls()
        return cls(min_dp_noise=promised.noise, max_dp_clip=promised.clip)

    def problems(self, task: LocalTask, examples: int) -> list[str]:
        """Why this owner will not train ``task`` on its ``examples`` private images; empty if it will.

        Types are checked first (JSON gives whatever the sender wrote: a float, a string, true for 1), then
        each limit, then the time the training would take, estimated as the server estimates a run.
        """
        settings = task.settings
        found = _type_problems(task)
        if found:
            return found
        if not 1 <= settings.epochs <= self.max_epochs:
            found.append(f"local epochs {settings.epochs} is not between 1 and {self.max_epochs}")
        if not self.min_batch_size <= settings.batch_size <= self.max_batch_size:
            found.append(
                f"batch size {settings.batch_size} is not between {self.min_batch_size} and {self.max_batch_size}"
            )
        if not 0 < settings.lr <= self.max_lr:
            found.append(f"learning rate {settings.lr:g} is not in (0, {self.max_lr:g}]")
        for name in ("momentum", "clip_norm"):
            valid = SETTINGS[name].valid
            if getattr(settings, name) not in valid:
                found.append(f"{SETTINGS[name].noun} {getattr(settings, name):g} is not {valid.text()}")
        found += self._dp_problems(settings)
        if not found:
            seconds = local_training_seconds(settings, examples)
            if seconds > self.max_seconds:
                found.append(
                    f"training would take about {duration_text(seconds)}, more than the "
                    f"{duration_text(self.max_seconds)} this owner allows a job"
                )
        return found

    def _dp_problems(self, settings: LocalSettings) -> list[str]:
        if self.min_dp_noise <= 0:
            return []
        if 0 < settings.dp_clip <= self.max_dp_clip and settings.dp_noise >= self.min_dp_noise:
            return []
        return [
            f"DP-SGD with noise multiplier at least {self.min_dp_noise:g} and clip at most {self.max_dp_clip:g} "
            f"is required, the job asks for noise {settings.dp_noise:g} and clip {settings.dp_clip:g}"
        ]


def _type_problems(task: LocalTask) -> list[str]:
    settings = task.settings
    found = []
    for name in ("worker", "round", "seed"):
        if not _is_int(getattr(task, name)):
            found.append(f"{name} must be a whole number")
    for name in ("epochs", "batch_size"):
        if not _is_int(getattr(settings, name)):
            found.append(f"{name} must be a whole number, got {getattr(settings, name)!r}")
    for name in ("lr", "momentum", "clip_norm", "dp_clip", "dp_noise", "prox_mu"):
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            found.append(f"{name} must be a finite number, got {value!r}")
    if not isinstance(settings.model, str) or settings.model not in MODELS:
        found.append(f"unknown model {settings.model!r}")
    return found


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def local_training_seconds(settings: LocalSettings, examples: int) -> float:
    """One worker's training of ``settings`` on ``examples`` images, as fed_core.config estimates a run's."""
    one_round = TrainConfig(
        workers=1,
        rounds=1,
        train_size=examples,
        local_epochs=settings.epochs,
        batch_size=settings.batch_size,
        model=settings.model,
        contribution_subset=0,
        dp="example" if settings.dp_clip > 0 else "none",
        strategy="fedprox" if settings.prox_mu > 0 else "fedavg",
    )
    return estimate_seconds(one_round)

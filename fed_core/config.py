"""Settings of a federated run, their limits, and an honest time estimate before it starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from fed_core.data.partition import MIN_EXAMPLES_PER_WORKER, PARTITIONS
from fed_core.federation.strategies import STRATEGIES, strategy_for, strategy_problems
from fed_core.models import INIT_METHODS, MODELS
from fed_core.privacy.policy import DP_MODES, privacy_for, privacy_problems
from fed_core.vocabulary import LocalSettings, UserError

TRAIN_SIZE = 60_000
# Measured with bench/bench_train.py on the 2-core reference machine: training examples per second
# (one local epoch of every worker counts its shard once) and seconds per full test-set evaluation.
EXAMPLES_PER_SECOND = {"crypto_cnn": 30_000, "relu_cnn": 4_000, "fedavg_cnn": 2_000}
EVAL_SECONDS = {"crypto_cnn": 0.05, "relu_cnn": 0.6, "fedavg_cnn": 2.0}
# Training images redrawn at random per second (fed_core/data/augment.py), whatever the model: the same order as
# crypto_cnn's training, so it about doubles that model's training time (default run: 3 rounds took 9.7-10.4 s
# of CPU without and 15.5-16.1 s with, interleaved) and adds a few percent to the pooling CNNs'.
AUGMENT_EXAMPLES_PER_SECOND = 30_000


class ConfigError(UserError, ValueError):
    """Settings out of range or that do not fit together; the message says which and why."""


@dataclass(frozen=True)
class TrainConfig:
    workers: int = 5
    rounds: int = 10
    fraction: float = 1.0  # C: share of workers sampled each round (at least one)
    local_epochs: int = 1
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9  # local SGD momentum
    clip_norm: float = 1.0
    partition: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration
    shards_per_worker: int = 2
    init: str = "default"
    dropout: float = 0.0  # chance that a sampled worker fails to report
    seed: int = 0
    model: str = "crypto_cnn"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    strategy: str = "fedavg"  # a name of federation.strategies.STRATEGIES (fedavg, fedprox, scaffold, fedadam, ...)
    prox_mu: float = 0.01  # FedProx only: weight mu of the proximal term mu/2 ||w - w_global||^2
    augment: bool = False  # workers train on randomly redrawn digits (fed_core/data/augment.py): reads drawings better
    train_size: int = TRAIN_SIZE  # first n training images (smaller for quick tests)
    contribution_subset: int = 1000  # test images used for the leave-one-out contribution score
    shapley: bool = True  # also each worker's Shapley value of the round (exact up to 8 workers, else sampled)
    engine: str = "inprocess"  # where workers train: a name of fed_core.engines.ENGINES, checked by engine_for
    manual_approval: bool = False  # syft only: each owner waits for a person to approve every job
    # Privacy (read only through fed_core/privacy/policy.py's privacy_for; secagg.py, dp.py):
    secure_aggregation: bool = False  # the server holds only masked updates and learns only their sum
    dp: str = "none"  # "example": DP-SGD inside each worker; "client": DP-FedAvg on the workers' updates
    dp_clip: float = 1.0  # S: the per-example gradient (example) or per-worker update (client) norm cap
    dp_noise: float = 1.0  # z: Gaussian noise of standard deviation z * S on the clipped sum
    dp_delta: float = 1e-5  # the delta of the (epsilon, delta) guarantee reported after every round
    # DP under secure aggregation only: the workers draw the noise in shares inside the masked sum (distributed_dp.py),
    # calibrated so that it holds with up to dp_colluding workers colluding with the server. Example-level DP then
    # runs FedSGD: one DP-SGD step per round, the federation's steps are central DP-SGD's.
    dp_distributed: bool = False
    dp_colluding: int = 0

    @property
    def local(self) -> LocalSettings:
        """What every worker trains with: the run's local settings, as its privacy and its strategy send them."""
        local_dp = privacy_for(self).local_dp
        settings = LocalSettings(
            self.model,
            self.local_epochs,
            self.batch_size,
            self.lr,
            self.momentum,
            self.clip_norm,
            local_dp.clip,
            local_dp.noise,
            dp_noise_split=local_dp.noise_split,
            augment=self.augment,
        )
        return strategy_for(self).local_settings(settings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


LIMITS = {  # name: (low, high), inclusive
    "workers": (1, 100),
    "rounds": (1, 200),
    "local_epochs": (1, 20),
    # No fixed cap below the training set: the memory budget decides (fed_core.limits.budget.largest_batch), so DP-SGD
    # can take the large expected batches it wants (1,000-4,000 for MNIST) where one worker of them fits.
    "batch_size": (1, TRAIN_SIZE),
    "shards_per_worker": (1, 20),
    "train_size": (100, TRAIN_SIZE),
    "contribution_subset": (0, 10_000),
    "seed": (0, 2**31 - 1),
    "dp_colluding": (0, 99),
}


# name: (what a user calls it, the allowed interval as they read it, the test); every value must also be finite.
REAL_RANGES: dict[str, tuple[str, str, Callable[[float], bool]]] = {
    "fraction": ("fraction C", "in (0, 1]", lambda v: 0 < v <= 1),
    "lr": ("learning rate", "in (0, 10]", lambda v: 0 < v <= 10),
    "momentum": ("local momentum", "in [0, 1)", lambda v: 0 <= v < 1),
    "server_lr": ("server learning rate", "in (0, 10]", lambda v: 0 < v <= 10),
    "server_momentum": ("server momentum", "in [0, 1)", lambda v: 0 <= v < 1),
    "dropout": ("dropout rate", "in [0, 1)", lambda v: 0 <= v < 1),
    "clip_norm": ("gradient clip norm", "positive", lambda v: v > 0),
    "alpha": ("Dirichlet alpha", "in (0, 1000]", lambda v: 0 < v <= 1000),
    "dp_clip": ("DP clip norm S", "in (0, 1000]", lambda v: 0 < v <= 1000),
    "dp_noise": ("DP noise multiplier z", "in [0, 100]", lambda v: 0 <= v <= 100),
    "dp_delta": ("DP delta", "in (0, 0.1]", lambda v: 0 < v <= 0.1),
    "prox_mu": ("FedProx mu", "in [0, 10]", lambda v: 0 <= v <= 10),
}


def problems(config: TrainConfig) -> list[str]:
    """Every reason the config cannot run, as sentences for a user; empty if it is fine."""
    out = []
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            out.append(f"{name.replace('_', ' ')} must be a whole number, got {value!r}.")
        elif not low <= value <= high:
            out.append(f"{name.replace('_', ' ')} must be between {low} and {high}, got {value}.")
    for name, (label, interval, allowed) in REAL_RANGES.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            out.append(f"{label} must be a finite number, got {value!r}.")
        elif not allowed(value):
            out.append(f"{label} must be {interval}, got {value}.")
    if config.manual_approval and config.engine != "syft":
        out.append("manual approval of jobs needs the syft engine, whose data owners approve each job.")
    out.extend(privacy_problems(config))
    out.extend(strategy_problems(config))
    choices = (("partition", PARTITIONS), ("init", INIT_METHODS), ("model", MODELS), ("dp", DP_MODES))
    for name, allowed in (*choices, ("strategy", STRATEGIES)):
        if getattr(config, name) not in allowed:
            out.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}.")
    if not out:
        out.extend(_fit_problems(config))
    return out


def _fit_problems(config: TrainConfig) -> list[str]:
    if config.train_size < config.workers * MIN_EXAMPLES_PER_WORKER:
        return [
            f"{config.train_size} training images cannot serve {config.workers} workers with at least "
            f"{MIN_EXAMPLES_PER_WORKER} each."
        ]
    if config.partition == "shards":
        shard_size = config.train_size // (config.workers * config.shards_per_worker)
        if shard_size < MIN_EXAMPLES_PER_WORKER:
            return [
                f"{config.workers} workers x {config.shards_per_worker} shards leaves shards of {shard_size} "
                "images: use fewer workers or fewer shards per worker."
            ]
    return []


def validate(config: TrainConfig) -> TrainConfig:
    found = problems(config)
    if found:
        raise ConfigError(" ".join(found))
    return config


def estimate_seconds(config: TrainConfig) -> float:
    """Rough wall time of the run on the reference machine (in-process engine)."""
    sampled = max(1.0, config.fraction * config.workers) / config.workers
    examples = config.rounds * sampled * (1 - config.dropout) * config.train_size * config.local_epochs
    # Small batches cost more per example (more steps); 128 is the reference.
    batch_factor = max(1.0, (128 / config.batch_size) ** 0.5)
    per_round_eval = EVAL_SECONDS[config.model] * (1 + config.contribution_subset / 10_000 * scored_models(config))
    training = examples / EXAMPLES_PER_SECOND[config.model] * batch_factor * STRATEGIES[config.strategy].local_cost
    training *= privacy_for(config).local_training_cost(config.workers, config.train_size)
    if config.augment:
        training += examples / AUGMENT_EXAMPLES_PER_SECOND
    return training + config.rounds * per_round_eval


def scored_models(config: TrainConfig) -> int:
    """Models each round scores on the contribution subset: leave-one-out's, and Shapley's coalitions."""
    workers = max(1, round(config.fraction * config.workers))
    if privacy_for(config).secure_aggregation or config.contribution_subset == 0:
        return 0
    shapley = 0 if not config.shapley else 2**workers if workers <= 8 else 32 * workers  # shapley.py's defaults
    return workers + 1 + shapley

"""Settings of a federated run, their limits, and an honest time estimate before it starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from fed_core.data.partition import MIN_EXAMPLES_PER_WORKER, PARTITIONS
from fed_core.federation.strategies import STRATEGIES, strategy_for, strategy_problems
from fed_core.models import INIT_METHODS, MODEL_LABELS, MODELS
from fed_core.privacy.policy import DP_MODES, privacy_for, privacy_problems
from fed_core.settings import Interval, Setting, declare, settings_of
from fed_core.vocabulary import LocalSettings, UserError

TRAIN_SIZE = 60_000
# Measured with bench/bench_train.py on the 2-core reference machine: training examples per second
# (one local epoch of every worker counts its shard once) and seconds per full test-set evaluation.
# tanh_cnn: CPU time on one thread, against relu_cnn in the same run (2.0-2.2x its training rate, 0.45x its
# evaluation time; default settings, 10,000 training examples).
EXAMPLES_PER_SECOND = {"crypto_cnn": 30_000, "relu_cnn": 4_000, "fedavg_cnn": 2_000, "tanh_cnn": 8_000}
EVAL_SECONDS = {"crypto_cnn": 0.05, "relu_cnn": 0.6, "fedavg_cnn": 2.0, "tanh_cnn": 0.3}
# Training images redrawn at random per second (fed_core/data/augment.py), whatever the model: the same order as
# crypto_cnn's training, so it about doubles that model's training time (default run: 3 rounds took 9.7-10.4 s
# of CPU without and 15.5-16.1 s with, interleaved) and adds a few percent to the pooling CNNs'.
AUGMENT_EXAMPLES_PER_SECOND = 30_000


class ConfigError(UserError, ValueError):
    """Settings out of range or that do not fit together; the message says which and why."""


PARTITION_LABELS = {
    "iid": "IID (shuffled)",
    "dirichlet": "Dirichlet label skew",
    "shards": "Label shards (FedAvg paper)",
}
INIT_LABELS = {
    "default": "PyTorch default",
    "kaiming": "He (Kaiming) normal",
    "xavier": "Xavier uniform",
    "uniform": "plain uniform U(-0.05, 0.05)",
}
ENGINE_LABELS = {
    "inprocess": "In this process (fastest)",
    "syft": "PySyft datasites: each worker is a data owner running approved jobs",
    "flower": "Flower: a ClientApp per worker on a simulated federation",
}
DP_LABELS = {
    "none": "no differential privacy",
    "example": "each training image (DP-SGD inside every worker)",
    "client": "each worker's whole data (DP-FedAvg)",
}
UNIT, HALF_OPEN = Interval(0, 1, low_open=True), Interval(0, 1, high_open=True)  # (0, 1] and [0, 1)
BASICS, MORE = "basics", "more"  # the Train page's groups: the top row, and the "More settings" expander


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; each field carries its declaration (fed_core/settings.py), read by the command
    line, the Train page, the Flower App's run config, the budget's refusals and :func:`problems`."""

    workers: int = declare(5, "Workers", help="how many data owners", valid=Interval(1, 100), place=(BASICS, 0))
    rounds: int = declare(10, "Rounds", help="communication rounds", valid=Interval(1, 200), place=(BASICS, 1))
    fraction: float = declare(
        1.0,
        "Fraction C sampled per round",
        help="share C of the workers sampled each round (at least one)",
        term="fraction C",
        valid=UNIT,
        widget="slider",
        shown=(0.05, 1.0),
        step=0.05,
        place=(BASICS, 2),
    )
    local_epochs: int = declare(
        1,
        "Local epochs E",
        help="passes over its data each worker makes a round",
        valid=Interval(1, 20),
        place=(MORE, 0),
    )
    # No fixed cap below the training set: the memory budget decides (fed_core.limits.estimates.largest_batch), so
    # DP-SGD can take the large expected batches it wants (1,000-4,000 for MNIST) where one worker of them fits.
    batch_size: int = declare(
        128, "Batch size B", help="examples per local step", valid=Interval(1, TRAIN_SIZE), place=(MORE, 0)
    )
    lr: float = declare(
        0.02,
        "Learning rate",
        help="local learning rate",
        term="learning rate",
        valid=Interval(0, 10, low_open=True),
        shown=(0.0001, 10.0),
        step=0.005,
        format="%.4f",
        place=(MORE, 1),
    )
    momentum: float = declare(
        0.9,
        "Local momentum",
        help="local SGD momentum",
        term="local momentum",
        valid=HALF_OPEN,
        shown=(0.0, 0.99),
        step=0.05,
        place=(MORE, 1),
    )
    clip_norm: float = declare(
        1.0,
        "Gradient clip norm",
        help="cap on the norm of each local step's gradient",
        term="gradient clip norm",
        valid=Interval(0, low_open=True),
        shown=(0.01, 1e9),  # 1e9: no clipping in effect
        step=0.1,
    )
    partition: str = declare(
        "iid",
        "How data is split",
        help="how the training images are dealt to the workers",
        widget="select",
        choices=PARTITIONS,
        labels=PARTITION_LABELS,
        place=(BASICS, 3),
    )
    alpha: float = declare(
        0.5,
        "alpha (smaller = more skew)",
        help="Dirichlet concentration of each worker's labels",
        term="Dirichlet alpha",
        valid=Interval(0, 1000, low_open=True),
        shown=(0.01, 100.0),
        step=0.1,
        place=(BASICS, 3),
        when=("partition", "dirichlet"),
    )
    shards_per_worker: int = declare(
        2,
        "Shards per worker",
        help="label-sorted shards dealt to each worker",
        valid=Interval(1, 20),
        place=(BASICS, 3),
        when=("partition", "shards"),
    )
    init: str = declare(
        "default",
        "Weight initialisation",
        help="how the global model's first weights are drawn",
        widget="select",
        choices=INIT_METHODS,
        labels=INIT_LABELS,
        place=(MORE, 2),
    )
    dropout: float = declare(
        0.0,
        "Worker dropout rate",
        help="chance that a sampled worker fails to report; the round goes on without it",
        term="dropout rate",
        valid=HALF_OPEN,
        widget="slider",
        shown=(0.0, 0.9),
        step=0.05,
        place=(MORE, 0),
    )
    seed: int = declare(
        0, "Seed", help="seed of the data split and sampling", valid=Interval(0, 2**31 - 1), place=(MORE, 1)
    )
    model: str = declare(
        "crypto_cnn",
        "Model",
        help="the network the workers train",
        widget="select",
        choices=MODELS,
        labels=MODEL_LABELS,
        place=(MORE, 2),
    )
    strategy: str = declare(
        "fedavg",
        "Strategy",
        help="FedProx and SCAFFOLD keep workers from drifting apart on non-IID data; FedAdam and FedYogi take "
        "adaptive server steps",
        widget="select",
        choices=STRATEGIES,
        place=(MORE, 3),
    )
    server_lr: float = declare(
        1.0,
        "Server learning rate",
        help="step the server takes along the averaged update (eta of FedAdam and FedYogi, which start from 0.01)",
        term="server learning rate",
        valid=Interval(0, 10, low_open=True),
        shown=(0.01, 10.0),
        step=0.1,
        place=(MORE, 3),
        default_by=("strategy", {name: strategy.default_server_lr for name, strategy in STRATEGIES.items()}),
    )
    server_momentum: float = declare(
        0.0,
        "Server momentum",
        help="momentum of the server's steps (FedAvgM when above 0)",
        term="server momentum",
        valid=HALF_OPEN,
        shown=(0.0, 0.99),
        step=0.1,
        place=(MORE, 3),
    )
    prox_mu: float = declare(
        0.01,
        "FedProx mu",
        help="weight mu of FedProx's proximal term mu/2 ||w - w_global||^2",
        term="FedProx mu",
        valid=Interval(0, 10),
        step=0.01,
        format="%.3f",
        place=(MORE, 3),
        when=("strategy", "fedprox"),
    )
    train_size: int = declare(
        TRAIN_SIZE, "Training images", help="use the first N training images", valid=Interval(100, TRAIN_SIZE)
    )
    contribution_subset: int = declare(
        1000,
        "Contribution test images",
        help="test images the leave-one-out contribution score uses",
        valid=Interval(0, 10_000),
    )
    shapley: bool = declare(
        True,
        "Shapley values",
        help="each worker's fair share of the round's gain (exact up to 8 workers, else sampled); costs a few "
        "model scores",
        widget="checkbox",
        place=(MORE, 2),
    )
    augment: bool = declare(
        False,
        "Augment: redraw digits at random",
        help="each batch with random stroke widths, small rotations and shears, scale, shift and elastic "
        "distortion (fed_core/data/augment.py). Turn it on if the model is for the Draw page: bold, slanted or "
        "small drawings are read better. Costs time (in the estimate) and a little MNIST test accuracy.",
        widget="checkbox",
        place=(MORE, 2),
    )
    engine: str = declare(  # engine_for checks it: its registry's package imports this module
        "inprocess",
        "Where workers train",
        help="in this process, on PySyft data owners' datasites or on Flower SuperNodes",
        widget="select",
        choices="fed_core.engines:ENGINES",
        labels=ENGINE_LABELS,
    )
    manual_approval: bool = declare(
        False,
        "Approve jobs manually",
        help="each owner waits until you press Approve on its job",
        widget="toggle",
        when=("engine", "syft"),
        cli=False,  # nobody at the terminal could press Approve: the page only
    )
    # Privacy, read only through fed_core/privacy/policy.py's privacy_for; the page sets the first three together
    # through its Privacy choice (ui/privacy_views.py).
    secure_aggregation: bool = declare(
        False,
        "Secure aggregation",
        help="the server holds only masked updates and learns only their sum",
        widget="checkbox",
        flag="--secure-agg",
    )
    dp: str = declare(
        "none",
        "Protect",
        help="example: DP-SGD inside each worker; client: DP-FedAvg on the workers' updates",
        widget="radio",
        choices=DP_MODES,
        labels=DP_LABELS,
    )
    dp_clip: float = declare(
        1.0,
        "Clip norm S",
        help="the per-example gradient (example) or per-worker update (client) norm cap",
        term="DP clip norm S",
        valid=Interval(0, 1000, low_open=True),
        shown=(0.001, 1000.0),
        step=0.1,
        format="%.3f",
        flag="--clip",
    )
    dp_noise: float = declare(
        1.0,
        "Noise multiplier z",
        help="Gaussian noise of standard deviation z * S on the clipped sum",
        term="DP noise multiplier z",
        valid=Interval(0, 100),
        step=0.1,
        flag="--noise",
    )
    dp_delta: float = declare(
        1e-5,
        "δ",
        help="the delta of the (epsilon, delta) guarantee reported after every round",
        term="DP delta",
        valid=Interval(0, 0.1, low_open=True),
        shown=(1e-9, 0.1),
        format="%.0e",
        flag="--delta",
    )
    # DP under secure aggregation only: the workers draw the noise in shares inside the masked sum
    # (distributed_dp.py), calibrated so that it holds with up to dp_colluding workers colluding with the server.
    # Example-level DP then runs FedSGD: one DP-SGD step per round, the federation's steps are central DP-SGD's.
    dp_distributed: bool = declare(
        False,
        "Noise split across workers",
        help="with DP and secure aggregation: the workers add the noise in discrete Gaussian shares inside the "
        "masked sum, so the server never sees the sum without it",
        widget="checkbox",
    )
    dp_colluding: int = declare(
        0,
        "Colluding workers c the noise withstands",
        help="workers that may collude with the server whose noise shares are not counted on",
        valid=Interval(0, 99),
        step=1,
    )

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


SETTINGS = settings_of(TrainConfig)
# name: (low, high), inclusive: the whole-number settings' ranges, as the budget and the data owners read them.
LIMITS = {name: (int(s.valid.low), int(s.valid.high)) for name, s in SETTINGS.items() if s.kind is int}


def problems(config: TrainConfig) -> list[str]:
    """Every reason the config cannot run, as sentences for a user; empty if it is fine."""
    settings = settings_of(type(config))
    out = [p for s in settings.values() if s.valid is not None for p in _range_problems(s, getattr(config, s.name))]
    if config.manual_approval and config.engine != "syft":
        out.append("manual approval of jobs needs the syft engine, whose data owners approve each job.")
    out.extend(privacy_problems(config))
    out.extend(strategy_problems(config))
    for name in (name for name, s in settings.items() if s.choices is not None and name != "engine"):
        allowed = settings[name].options()  # the engine: engine_for checks it, beside its registry
        if getattr(config, name) not in allowed:
            out.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}.")
    if not out:
        out.extend(_fit_problems(config))
    return out


def _range_problems(setting: Setting, value: object) -> list[str]:
    """Why a number setting's value is out of its declared range: not a whole number where one is needed, not
    finite, or outside the interval."""
    if setting.kind is int:
        low, high = int(setting.valid.low), int(setting.valid.high)
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{setting.noun} must be a whole number, got {value!r}."]
        return [] if value in setting.valid else [f"{setting.noun} must be between {low} and {high}, got {value}."]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [f"{setting.noun} must be a finite number, got {value!r}."]
    return [] if value in setting.valid else [f"{setting.noun} must be {setting.valid.text()}, got {value}."]


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

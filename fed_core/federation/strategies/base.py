"""What every strategy answers, in the shape of Flower's ``flwr.server.strategy.Strategy``.

A strategy is built once per run (:func:`fed_core.federation.strategies.strategy_for`) and owns whatever it keeps
between rounds. The round loop (server.py) asks it, in this order:

* :meth:`Strategy.local_settings`: what it sends the workers beside the global model (FedProx's mu);
* :meth:`Strategy.workers`: the workers as it talks to them, where it sends more than the model (SCAFFOLD's
  per-worker corrections c - c_i ride on every training request);
* :meth:`Strategy.step`: the server update, the aggregated average applied to the global vector;
  :meth:`Strategy.propose` is the same without committing any state (leave-one-out and Shapley scores);
* :meth:`Strategy.after_round`: anything it updates once the round is over (SCAFFOLD's server variate).

Every method but the server update has a do-nothing default, so a server-side strategy (FedAdam, FedYogi) is
one method; :class:`FedOpt` is the adaptive optimizers' shared part (Flower's ``FedOpt``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

import torch

from fed_core.privacy.policy import PrivacySettings
from fed_core.vocabulary import LocalSettings

# Reddi et al. 2021's server Adam and Yogi, with Flower's defaults (flwr.server.strategy.FedAdam, FedYogi): fixed,
# not settings. BETA_1 is the server momentum, BETA_2 the decay of the second moment, TAU the adaptivity floor
# that keeps a step bounded by eta * |m| / TAU where the second moment is near zero.
BETA_1 = 0.9
BETA_2 = 0.99
TAU = 1e-3
# The largest eta they take: already too large for the small CNNs here (FedOpt), kept as the top of the range
# that adaptive server optimizers are tuned over, so that FedAvg's default server_lr of 1.0 is refused, explained.
MAX_ETA = 0.1

Pool = TypeVar("Pool")  # the round's server.WorkerPool


class RunSettings(PrivacySettings, Protocol):
    """What the strategies read of a run's settings: config.TrainConfig has them all.

    A protocol rather than TrainConfig itself because config.py asks the strategies for the workers' settings,
    a run's problems and its cost: importing config here would close an import loop (tests/test_layers.py).
    The privacy settings come in whole: a strategy asks the run's privacy object (privacy.policy) what it does.
    """

    strategy: str
    momentum: float
    server_lr: float
    server_momentum: float
    prox_mu: float


class Strategy:
    """One federated strategy, built from a run's config; subclasses set the class attributes below."""

    label: ClassVar[str]  # what the CLI help and the Train page call it
    local_cost: ClassVar[float] = 1.0  # a local step's time against plain SGD's (config.estimate_seconds)
    default_server_lr: ClassVar[float] = 1.0  # the server learning rate the CLI and the Train page start from

    def __init__(self, config: RunSettings) -> None:
        self.server_lr = config.server_lr
        self.state: Any = None  # what the server update carries from round to round; set by step

    @classmethod
    def problems(cls, config: RunSettings) -> list[str]:
        """Why ``config`` cannot run with this strategy, as sentences for a user; empty if it can.

        config.problems has checked every setting's own range already (server_lr in (0, 10] for example).
        """
        return []

    def local_settings(self, settings: LocalSettings) -> LocalSettings:
        """The settings every worker trains with: by default the config's, unchanged."""
        return settings

    def workers(self, pool: Pool) -> Pool:
        """The workers as this strategy talks to them: by default the pool itself, sent only the global model."""
        return pool

    def server_update(self, global_vector: torch.Tensor, average: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The next global vector from the round's average update, and the state it leaves; commits nothing.

        ``average`` may be a batch [M, P] of averages (Shapley's coalitions): the update must broadcast.
        """
        raise NotImplementedError

    def propose(self, global_vector: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        """The next global model, without committing any state (used for leave-one-out and Shapley scores)."""
        return self.server_update(global_vector, average)[0]

    def step(self, global_vector: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        """The next global model; the state (velocity, moments) moves on with it."""
        new_vector, self.state = self.server_update(global_vector, average)
        return new_vector

    def after_round(self) -> None:
        """Whatever the strategy updates once a round is over; by default nothing."""


class FedOpt(Strategy):
    """Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2): the server treats the average update
    Δ as a pseudo-gradient and takes an adaptive step with eta = ``server_lr``:

        m = BETA_1 m + (1 - BETA_1) Δ;   v = second_moment(v, Δ²);   x = x + eta m / (sqrt(v) + TAU)

    with m and v zero before the first round, per coordinate, and no bias correction (the paper's form; Flower's
    FedAdam adds Adam's bias correction to eta, its FedYogi does not). Subclasses give the second moment.

    The server's step is about eta per weight whatever the updates' scale (m / sqrt(v) is near 1 where the
    updates agree), so eta is a distance: FedAvg's server_lr of 1.0 would move every weight by about 1 a round.
    Reddi et al. tune eta over powers of ten and report best values around 1e-2 for their image CNNs. Measured
    here (crypto_cnn, 10 workers, C = 0.5, 20k images, 10 rounds, IID): eta 0.01 ends at 94.5% as FedAvg does
    (94.6%), 0.003 at 92%, 0.03 at 94% but unsteadily, 0.1 at 43% and 0.3 or 1.0 below 33%. So the default is
    0.01 and anything above MAX_ETA is refused with the reason.
    """

    local_cost = 1.0  # server-side only: the workers train as under FedAvg
    default_server_lr = 0.01

    def __init__(self, config: RunSettings) -> None:
        super().__init__(config)
        self.state = (0.0, 0.0)  # m, v: zero until the first round's update (broadcast as tensors then)

    @classmethod
    def problems(cls, config: RunSettings) -> list[str]:
        out = []
        if config.server_lr > MAX_ETA:
            out.append(
                f"{cls.label} takes a server learning rate (eta) of at most {MAX_ETA:g}, got {config.server_lr:g}: "
                f"its step moves each weight by about eta a round whatever the updates' size, so FedAvg's 1.0 is far "
                f"too large. Start from {cls.default_server_lr:g}."
            )
        if config.server_momentum != 0:
            out.append(
                f"{cls.label} keeps its own server momentum (beta_1 = {BETA_1}): set server momentum to 0, "
                f"got {config.server_momentum:g}."
            )
        return out

    @staticmethod
    def second_moment(v: torch.Tensor | float, squared: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def server_update(
        self, global_vector: torch.Tensor, average: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        m, v = self.state
        m = BETA_1 * m + (1 - BETA_1) * average
        v = self.second_moment(v, average * average)
        return global_vector + self.server_lr * m / (v.sqrt() + TAU), (m, v)

"""Where local training runs: in this process, as syft jobs on data owners' datasites, or on Flower SuperNodes.

Every engine runs the same server loop (:func:`fed_core.federation.server.run_federated`) and the same worker training
(:class:`fed_core.federation.trainer.BatchedTrainer`); they differ only in where a worker's training happens and how its
update travels. :func:`engine_for` is the one place a run's engine is chosen and its settings are validated.

To add an engine, write a module with a subclass of :class:`Engine` (its ``host`` runs the rounds with the
engine's WorkerPool in this process; an engine whose framework runs the server loop in a process of its own,
as ``flwr run`` does, overrides ``run`` and relays the rounds back) and add one line to ``ENGINES``. Engine
modules import their frameworks (syft, flwr), so only a run that uses one pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from fed_core.config import ConfigError, TrainConfig, validate
from fed_core.data.mnist import Mnist
from fed_core.federation.server import FederatedRun, RoundRecord, WorkerPool, run_federated
from fed_core.vocabulary import UserError

ENGINES = {  # name: "module:class"
    "inprocess": "fed_core.engines.inprocess:InProcessEngine",
    "syft": "fed_core.engines.syft_engine:SyftEngine",
    "flower": "fed_core.engines.flower_engine:FlowerEngine",
}


class EngineError(UserError, RuntimeError):
    """A worker could not train on its engine (a job rejected or failed, a node missing); says which and why."""


PoolFactory = Callable[..., WorkerPool]  # (model, data, shards, config, should_stop) -> the round's WorkerPool
Rounds = Callable[[PoolFactory], FederatedRun]  # every round of the run, with workers from the given pool
StopCheck = Callable[[], bool] | None


class Engine:
    """A federated run of one config; each engine says where workers train and what stands around the rounds."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def run(
        self,
        data: Mnist,
        on_start: Callable[[FederatedRun], None] | None = None,
        on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FederatedRun:
        """Train every round; the callbacks see the run start and each round end, and may stop it."""

        def rounds(pool_factory: PoolFactory) -> FederatedRun:
            return run_federated(self.config, data, pool_factory, on_start, on_round, should_stop)

        return self.host(rounds, should_stop)

    def host(self, rounds: Rounds, should_stop: StopCheck) -> FederatedRun:
        """Call ``rounds`` with this engine's pool factory, inside whatever the engine needs around it."""
        raise NotImplementedError


def engine_for(config: TrainConfig) -> Engine:
    """The engine ``config.engine`` names, for ``config``; raises ConfigError if the config cannot run."""
    if config.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {config.engine!r}.")
    validate(config)
    module, name = ENGINES[config.engine].split(":")
    return getattr(import_module(module), name)(config)

"""Where local training runs: in this process, as syft jobs on data owners' datasites, or on Flower SuperNodes.

Every engine runs the same server loop (:func:`fed_core.server.run_federated`) and the same worker training
(:class:`fed_core.client.BatchedTrainer`); they differ only in where a worker's training happens and how its
update travels. :func:`engine_for` is the one place a run's engine is chosen and its settings are validated.

To add an engine, write a module with a class ``Name(config)`` that has the :class:`Engine` methods and add one
line to ``ENGINES``. Engine modules import their frameworks (syft, flwr), so only a run that uses one pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from fed_core.config import ConfigError, TrainConfig, validate

if TYPE_CHECKING:
    from fed_core.data import Mnist
    from fed_core.server import FederatedRun, RoundRecord

ENGINES = {  # name: "module:class"
    "inprocess": "fed_core.engines.inprocess:InProcessEngine",
    "syft": "fed_core.engines.syft_engine:SyftEngine",
    "flower": "fed_core.engines.flower_engine:FlowerEngine",
}


class EngineError(RuntimeError):
    """A worker could not train on its engine (a job rejected or failed, a node missing); says which and why."""


class Engine(Protocol):
    """A federated run of one config: ``run`` trains every round and returns the run."""

    config: TrainConfig

    def run(
        self,
        data: Mnist,
        on_start: Callable[[FederatedRun], None] | None = None,
        on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FederatedRun: ...


def engine_for(config: TrainConfig) -> Engine:
    """The engine ``config.engine`` names, for ``config``; raises ConfigError if the config cannot run."""
    if config.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {config.engine!r}.")
    validate(config)
    module, name = ENGINES[config.engine].split(":")
    return getattr(import_module(module), name)(config)

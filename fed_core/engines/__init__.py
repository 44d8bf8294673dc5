"""Where local training runs: in this process, as syft jobs on data owners' datasites, or on Flower SuperNodes.

Every engine runs the same server loop (``fed_core.server.run_federated``) and the same worker
training (``fed_core.client.BatchedTrainer``); they differ only in where a worker's training happens
and how its update travels. ``run_federated`` hands a config whose engine is not "inprocess" to
:func:`run_engine`. The engine modules import syft or flwr, so they are imported only when a run
asks for them and the default path stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fed_core.config import TrainConfig
    from fed_core.data import Mnist
    from fed_core.server import FederatedRun, RoundRecord


class EngineError(RuntimeError):
    """A worker could not train on its engine (a job rejected or failed, a node missing); says which and why."""


class Engine(Protocol):
    def run(
        self,
        config: TrainConfig,
        data: Mnist,
        on_start: Callable[[FederatedRun], None] | None = None,
        on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FederatedRun: ...


def engine_for(name: str, manual_approval: bool = False) -> Engine:
    """The engine called ``name``; ``manual_approval`` makes syft owners wait for a person to approve each job."""
    if name == "syft":
        from .syft_engine import SyftEngine

        return SyftEngine(manual_approval=manual_approval)
    if name == "flower":
        from .flower_engine import FlowerEngine

        return FlowerEngine()
    raise ValueError(f"There is no engine called {name!r} besides the in-process one; choose syft or flower.")


def run_engine(
    config: TrainConfig,
    data: Mnist,
    on_start: Callable[[FederatedRun], None] | None = None,
    on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FederatedRun:
    """Run ``config`` on the engine it names, with owners approving jobs automatically."""
    return engine_for(config.engine).run(config, data, on_start=on_start, on_round=on_round, should_stop=should_stop)

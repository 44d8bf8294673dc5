"""The strategies a run can use (``TrainConfig.strategy``), one module each, in the shape of Flower's.

Each is a :class:`~fed_core.federation.strategies.base.Strategy` that owns its state across rounds and answers
the round loop (server.py): the local settings it sends, the workers as it talks to them (per-worker
corrections), the server update, and what it does after the round. To add one, write a module with a
subclass (a server-side optimizer needs only ``server_update``) and add one line to ``STRATEGIES``; the CLI's
``--strategy`` and the Train page list the registry.
"""

from __future__ import annotations

from fed_core.federation.strategies.base import RunSettings, Strategy
from fed_core.federation.strategies.fedadam import FedAdam
from fed_core.federation.strategies.fedavg import FedAvg, fedavg
from fed_core.federation.strategies.fedprox import FedProx
from fed_core.federation.strategies.fedyogi import FedYogi
from fed_core.federation.strategies.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {  # name: class; its ``label`` is what a user reads
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}

__all__ = ["STRATEGIES", "Strategy", "fedavg", "strategy_for", "strategy_problems"]


def strategy_for(config: RunSettings) -> Strategy:
    """A fresh strategy object for the run ``config`` (a validated config names one of ``STRATEGIES``)."""
    return STRATEGIES[config.strategy](config)


def strategy_problems(config: RunSettings) -> list[str]:
    """What the chosen strategy cannot run with (an unknown name is config.problems' to report)."""
    strategy = STRATEGIES.get(config.strategy)
    return strategy.problems(config) if strategy else []

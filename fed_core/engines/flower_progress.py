"""A simulated Flower run's rounds, carried from its ServerApp's process back to the engine, and Stop carried in.

Under ``flwr run`` the ServerApp runs in ``flwr-simulation``, a process the SuperLink starts, not in the app's
process: the Train page's callbacks and Stop button cannot reach ``run_federated`` directly. The two sides
share the run's private folder (``engine-dir`` in the run config, a ``TemporaryDirectory``, mode 0700):

- the ServerApp (:class:`ProgressWriter`) writes one event file per step, ``start`` (the label histogram),
  ``round`` (the RoundRecord, the server view and the global vector) and an ending, ``done``, ``stopped``
  or ``failed`` (with its message), each written whole and renamed into place, so a reader never sees half;
- the engine (:class:`ProgressReader`) reads them in order and replays them on a mirror FederatedRun, with
  the same callbacks the in-process engine calls;
- Stop is a file the engine creates, which the ServerApp's ``should_stop`` looks for at every check.

Events are loaded with ``torch.load(weights_only=True)``: tensors and plain values only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from fed_core.config import TrainConfig
from fed_core.engines import EngineError
from fed_core.federation.server import FederatedRun, RoundRecord, ServerView, load_vector
from fed_core.models import new_model
from fed_core.vocabulary import TrainingStopped, flatten, model_params

STOP_FILE = "stop"
EVENT_PATTERN = "event-{:05d}.pt"
START, ROUND, DONE, STOPPED, FAILED = "start", "round", "done", "stopped", "failed"


class FlowerRunFailed(RuntimeError):
    """The ServerApp of a simulated run failed; the message is its error."""


class ProgressWriter:
    """The ServerApp's side: the callbacks and stop check for ``run_federated``, and the run's ending."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def should_stop(self) -> bool:
        return (self.folder / STOP_FILE).exists()

    def on_start(self, run: FederatedRun) -> None:
        self._write(START, label_histogram=run.label_histogram)

    def on_round(self, run: FederatedRun, record: RoundRecord) -> None:
        view = run.server_view
        self._write(
            ROUND,
            record=record.to_dict(),
            view=None if view is None else {"worker": view.worker, "update": view.update, "received": view.received},
            vector=flatten(model_params(run.model)),
            wall_seconds=run.wall_seconds,
        )

    def end(self, kind: str, message: str = "", user_error: bool = False) -> None:
        """Write the run's ending: ``done``, ``stopped`` or ``failed`` (``user_error``: one the user can fix)."""
        self._write(kind, message=message, user_error=user_error)

    def _write(self, kind: str, **content) -> None:
        path = self.folder / EVENT_PATTERN.format(self.count)
        torch.save({"kind": kind, **content}, path.with_suffix(".part"))
        os.replace(path.with_suffix(".part"), path)
        self.count += 1


class ProgressReader:
    """The engine's side: replays the ServerApp's events on a mirror run, with the page's callbacks."""

    def __init__(
        self,
        folder: Path,
        config: TrainConfig,
        on_start: Callable[[FederatedRun], None] | None = None,
        on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
    ) -> None:
        self.folder, self.config = folder, config
        self.on_start, self.on_round = on_start, on_round
        self.count = 0
        self.run: FederatedRun | None = None
        self.ending: dict | None = None

    def request_stop(self) -> None:
        (self.folder / STOP_FILE).touch()

    def poll(self) -> bool:
        """Replay every event written since the last poll; True once the run has ended."""
        while self.ending is None and (path := self.folder / EVENT_PATTERN.format(self.count)).exists():
            self._replay(torch.load(path, weights_only=True))
            self.count += 1
        return self.ending is not None

    def result(self) -> FederatedRun:
        """The finished run; raises TrainingStopped or FlowerRunFailed as the ServerApp's run ended."""
        if self.ending is None:
            raise FlowerRunFailed("The Flower simulation ended without a result.")
        if self.ending["kind"] == STOPPED:
            raise TrainingStopped(self.ending["message"])
        if self.ending["kind"] == FAILED:
            raise (EngineError if self.ending["user_error"] else FlowerRunFailed)(self.ending["message"])
        return self.run

    def _replay(self, event: dict) -> None:
        if event["kind"] == START:
            model = new_model(self.config.model, self.config.init, self.config.seed)
            self.run = FederatedRun(self.config, event["label_histogram"], model=model)
            if self.on_start:
                self.on_start(self.run)
        elif event["kind"] == ROUND:
            record = RoundRecord(**event["record"])
            self.run.history.append(record)
            if event["view"] is not None:
                self.run.server_view = ServerView(**event["view"])
            load_vector(self.run.model, event["vector"])
            self.run.wall_seconds = event["wall_seconds"]
            if self.on_round:
                self.on_round(self.run, record)
        else:
            self.ending = event

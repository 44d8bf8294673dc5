"""The Flower engine: the same worker training and FedAvg, as a Flower ClientApp and ServerApp.

The ServerApp's main runs fed_core's own server loop (``run_federated``), so sampling, partitioning,
FedAvg weighting, evaluation and contribution scores are exactly those of the other engines. Only
local training moves: :class:`FlowerPool` sends one Message per sampled worker, carrying the global
weights (an ArrayRecord) and the round's task (a ConfigRecord), to the SuperNode holding that
worker's shard; the ClientApp trains on it and replies with the weight delta, the number of examples
and the metrics.

With ``secure_aggregation`` on, the round's updates travel through Flower's own SecAgg+ instead
(flower_secagg.py): :meth:`FlowerPool.train_aggregate` runs ``SecAggPlusWorkflow``, the ClientApp
answers its four stages through ``secaggplus_mod``, and the server gets only the weighted sum.

Two ways to run it:

- :class:`FlowerEngine` (``--engine flower``): Flower's Simulation Engine, one virtual SuperNode per
  worker in Ray actors on this machine. The ServerApp runs in a thread of this process, so the
  Train page's callbacks see every round.
- ``flwr run fed_core/flower_app``: the Deployment Engine, a SuperLink and one ``flower-supernode``
  per worker, each given its own shard file by node config (``scripts/flower_deployment.py``). Its
  ``server_app`` and ``client_app`` live in ``fed_core/flower_app/app.py``, built only when Flower loads them.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid, ServerApp

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist
from fed_core.engines import Engine, EngineError, Rounds, StopCheck
from fed_core.engines.flower_secagg import SecureRound, secure_round, train_reply
from fed_core.engines.ray_guard import locked_down_ray, set_switches
from fed_core.engines.worker_job import LocalTask, load_shard, save_shard, train_local
from fed_core.federation.server import FederatedRun
from fed_core.privacy.policy import privacy_for
from fed_core.vocabulary import Aggregate, TrainingStopped, WorkerUpdate

POLL_SECONDS = 0.1  # how often the server pulls replies (Flower's own send_and_receive waits 3 s)
CONNECT_SECONDS = 120.0  # how long the server waits for every worker's SuperNode to connect
REPLY_SECONDS = 900.0  # how long it waits for a round's replies before giving up on a lost SuperNode
PARTITION_ID = "partition-id"  # node config key naming the worker a SuperNode is (Flower's convention)
SHARD_FILE = "shard-file"  # node config key of a deployed SuperNode's data file


class FlowerClientError(EngineError):
    """A worker's ClientApp failed or the SuperNodes do not match the workers."""


# --- ClientApp -------------------------------------------------------------------------------------


def client_app_for(shard_file: Callable[[Context], str]) -> ClientApp:
    """A ClientApp that trains on the shard file ``shard_file(context)`` of the node it runs on.

    A train Message of a SecAgg+ stage (it carries Flower's ``secaggplus_configs``) goes through
    ``secaggplus_mod``, which trains through :func:`train_reply` and masks the result; any other train
    Message gets the plain update.
    """
    app = ClientApp()

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        """Tell the server which worker this node is."""
        node = ConfigRecord({PARTITION_ID: int(context.node_config[PARTITION_ID])})
        return Message(RecordDict({"node": node}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, context, lambda m, c: train_reply(m, *_shard(shard_file(c))))
        task = LocalTask.from_dict(dict(msg.content["task"]))
        global_vector = torch.tensor(msg.content["weights"]["global"].numpy())
        update = train_local(task, global_vector, *_shard(shard_file(context)))
        metrics = MetricRecord(
            {
                "num-examples": update.num_examples,
                "loss-before": update.loss_before,
                "loss-after": update.loss_after,
                "accuracy-after": update.accuracy_after,
            }
        )
        return Message(
            RecordDict({"update": ArrayRecord({"delta": Array(update.delta.numpy())}), "metrics": metrics}),
            reply_to=msg,
        )

    return app


@lru_cache(maxsize=8)
def _shard(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    # A node process serves many rounds: read its file once.
    return load_shard(path)


# --- ServerApp side --------------------------------------------------------------------------------


class FlowerPool:
    """Local training on Flower SuperNodes: one train Message per sampled worker per round."""

    def __init__(
        self,
        grid: Grid,
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
        reply_seconds: float = REPLY_SECONDS,
    ) -> None:
        self.grid = grid
        self.config = config
        self.should_stop = should_stop
        self.reply_seconds = reply_seconds
        self.nodes: dict[int, int] = {}

    def connect(self) -> FlowerPool:
        """Find which SuperNode holds which worker's shard; returns the pool, ready to train."""
        self.nodes = self._find_workers(self.config.workers)
        return self

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]:
        """Every worker's update, in the clear; refused for a run with secure aggregation."""
        if privacy_for(self.config).secure_aggregation:
            raise FlowerClientError(
                "this run uses secure aggregation: its updates travel only through train_aggregate."
            )
        weights = ArrayRecord({"global": Array(global_vector.numpy())})
        messages = [
            Message(
                RecordDict(
                    {"weights": weights, "task": ConfigRecord(LocalTask.for_round(self.config, w, round_idx).to_dict())}
                ),
                dst_node_id=self.nodes[w],
                message_type=MessageType.TRAIN,
                group_id=str(round_idx),
            )
            for w in workers
        ]
        replies = {reply.metadata.src_node_id: reply for reply in self._exchange(messages)}
        return [_worker_update(w, replies[self.nodes[w]]) for w in workers]

    def train_aggregate(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> Aggregate:
        """A round of Flower's SecAgg+, as fed_core's server loop takes it (aggregation.SecureAggregatingPool)."""
        return self.run_secure_round(global_vector, workers, round_idx).as_aggregate()

    def run_secure_round(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> SecureRound:
        """The FedAvg average of the workers' updates through Flower's SecAgg+, never any single update.

        Workers that fail or stay silent for ``reply_seconds`` during the protocol are dropped (their masks
        are removed with their peers' shares); the result says which and why, or why no sum came out.
        """
        return secure_round(
            self._send_and_collect, self.nodes, self.config, global_vector, workers, round_idx, self.reply_seconds
        )

    def _find_workers(self, count: int) -> dict[int, int]:
        """Worker index -> node id: wait until ``count`` SuperNodes are connected, then ask each which it is."""
        deadline = time.monotonic() + CONNECT_SECONDS
        while len(node_ids := list(self.grid.get_node_ids())) < count:
            if time.monotonic() > deadline:
                raise FlowerClientError(
                    f"Only {len(node_ids)} of {count} Flower SuperNodes connected within {CONNECT_SECONDS:.0f} s: "
                    "start one SuperNode per worker."
                )
            self._check_stop()
            time.sleep(POLL_SECONDS)
        queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
        nodes = {}
        for reply in self._exchange(queries):
            if reply.has_error():
                raise FlowerClientError(f"A SuperNode could not say which worker it is: {reply.error.reason}")
            nodes[int(reply.content["node"][PARTITION_ID])] = reply.metadata.src_node_id
        if sorted(nodes) != list(range(count)):
            raise FlowerClientError(
                f"The SuperNodes must have partition ids 0 to {count - 1}, one per worker; they have {sorted(nodes)}."
            )
        return nodes

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """Send ``messages`` and wait for every reply, stopping early if the user asks to."""
        replies = self._send_and_collect(messages, self.reply_seconds)
        if len(replies) < len(messages):
            missing = len(messages) - len(replies)
            raise FlowerClientError(f"{missing} SuperNode(s) did not reply within {self.reply_seconds:g} s.")
        return replies

    def _send_and_collect(self, messages: list[Message], seconds: float | None) -> list[Message]:
        """Send ``messages``; the replies that arrive within ``seconds`` (None: the pool's reply_seconds)."""
        waiting = set(self.grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.monotonic() + (self.reply_seconds if seconds is None else seconds)
        while waiting:
            self._check_stop()
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
            pulled = list(self.grid.pull_messages(waiting))
            replies += pulled
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
        return replies

    def _check_stop(self) -> None:
        if self.should_stop and self.should_stop():
            raise TrainingStopped()


def _worker_update(worker: int, reply: Message) -> WorkerUpdate:
    if reply.has_error():
        raise FlowerClientError(f"Worker {worker}'s ClientApp failed: {reply.error.reason}")
    metrics = reply.content["metrics"]
    return WorkerUpdate(
        worker,
        int(metrics["num-examples"]),
        torch.tensor(reply.content["update"]["delta"].numpy()),
        float(metrics["loss-before"]),
        float(metrics["loss-after"]),
        float(metrics["accuracy-after"]),
    )


def flower_pool_factory(grid: Grid, shard_dir: Path | None = None) -> Callable[..., FlowerPool]:
    """The ``pool_factory`` of ``run_federated`` for a ServerApp.

    With ``shard_dir`` (simulation), it first gives each virtual SuperNode its shard, as a file there.
    """

    def connect(
        model,
        data: Mnist,
        shards: list[torch.Tensor],
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> FlowerPool:
        if shard_dir is not None:
            for worker, shard in enumerate(shards):
                save_shard(shard_dir / shard_file_name(worker), data.train_images[shard], data.train_labels[shard])
        return FlowerPool(grid, config, should_stop).connect()

    return connect


def shard_file_name(worker: int) -> str:
    return f"worker-{worker}.pt"


# --- Simulation Engine -----------------------------------------------------------------------------

_simulation_slot = threading.Lock()  # Ray is one per process: simulations take turns


class FlowerEngine(Engine):
    """Runs a config with Flower's Simulation Engine, one virtual SuperNode (Ray actor) per worker."""

    def host(self, rounds: Rounds, should_stop: StopCheck) -> FederatedRun:
        result: list[FederatedRun] = []
        simulate(
            self.config.workers,
            lambda grid, shard_dir: result.append(rounds(flower_pool_factory(grid, shard_dir))),
            should_stop,
        )
        return result[0]


def simulate(workers: int, serve: Callable[[Grid, Path], None], should_stop: Callable[[], bool] | None = None) -> None:
    """Run ``serve(grid, shard_dir)`` as a ServerApp's main, with ``workers`` virtual SuperNodes.

    Node ``i`` reads its shard from ``shard_dir / shard_file_name(i)``, which
    ``flower_pool_factory(grid, shard_dir)`` writes. Ray's cluster requires a fresh token and listens on
    loopback only (ray_guard.py).
    """
    set_switches()  # before Flower's simulation imports Ray, which reads them once
    # Here, not at the top: it imports Ray (seconds), which deployed SuperNodes and ServerApps never use.
    from flwr.simulation import run_simulation

    _wait_for_slot(should_stop)
    try:
        with locked_down_ray(), tempfile.TemporaryDirectory(prefix="fed-flower-") as shard_dir:
            server = ServerApp()

            @server.main()
            def main(grid: Grid, context: Context) -> None:
                serve(grid, Path(shard_dir))

            run_simulation(
                server,
                client_app_for(_simulated_shard_file(shard_dir)),
                num_supernodes=workers,
                backend_config=simulation_backend(),
            )
    finally:
        _simulation_slot.release()


def _simulated_shard_file(shard_dir: str) -> Callable[[Context], str]:
    return lambda context: os.path.join(shard_dir, shard_file_name(int(context.node_config[PARTITION_ID])))


def _wait_for_slot(should_stop: Callable[[], bool] | None) -> None:
    while not _simulation_slot.acquire(timeout=POLL_SECONDS * 5):
        if should_stop and should_stop():
            raise TrainingStopped()


def simulation_backend() -> dict:
    """Ray sized for this machine: one core per virtual SuperNode, so nodes train side by side; no dashboard
    (one more server to expose)."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "num_gpus": 0,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "include_dashboard": False,
        },
    }

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

Both ways to run it go through ``flwr run fed_core/flower_app`` (its ``server_app`` and ``client_app`` live in
``fed_core/flower_app/app.py``), Flower's supported path since ``run_simulation`` was deprecated (flwr 1.42):

- :class:`FlowerEngine` (``--engine flower``, the Train page): a SuperLink in simulation mode on loopback
  (flower_superlink.py), one virtual SuperNode per worker in Ray actors. The ServerApp runs in Flower's
  ``flwr-simulation`` process; each round comes back to the page's callbacks, and Stop goes to the ServerApp,
  through the run's private folder (flower_progress.py).
- The Deployment Engine: a SuperLink and one ``flower-supernode`` per worker, each given its own shard file by
  node config (``scripts/flower_deployment.py``).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import psutil
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist, load_mnist
from fed_core.engines import Engine, EngineError
from fed_core.engines.flower_progress import (
    DONE,
    FAILED,
    STOPPED,
    FlowerRunFailed,
    ProgressReader,
    ProgressWriter,
)
from fed_core.engines.flower_secagg import SecureRound, secure_round, train_reply
from fed_core.engines.flower_superlink import LocalSuperLink
from fed_core.engines.ray_guard import ray_environment
from fed_core.engines.worker_job import LocalTask, load_shard, save_shard, train_local
from fed_core.federation.server import FederatedRun, RoundRecord, run_federated
from fed_core.flower_app.run_config import ENGINE_DIR, run_config_of
from fed_core.privacy.policy import privacy_for
from fed_core.vocabulary import Aggregate, TrainingStopped, UserError, WorkerUpdate

POLL_SECONDS = 0.1  # how often the server pulls replies (Flower's own send_and_receive waits 3 s)
CONNECT_SECONDS = 120.0  # how long the server waits for every worker's SuperNode to connect
REPLY_SECONDS = 900.0  # how long it waits for a round's replies before giving up on a lost SuperNode
PARTITION_ID = "partition-id"  # node config key naming the worker a SuperNode is (Flower's convention)
SHARD_FILE = "shard-file"  # node config key of a deployed SuperNode's data file
STOP_SECONDS = 60.0  # how long a stopped simulation may take to end its round before it is ended by force


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


# --- Simulation Engine, through `flwr run` -------------------------------------------------------------

_simulation_slot = threading.Lock()  # each simulation sizes Ray to the whole machine: they take turns


class FlowerEngine(Engine):
    """Runs a config on Flower's Simulation Runtime: ``flwr run`` of the project's Flower App on a SuperLink of
    its own, one virtual SuperNode (Ray actor) per worker.

    The ServerApp runs ``run_federated`` in ``flwr-simulation``, a process the SuperLink starts, so this
    engine runs the rounds there instead of calling ``host``: it relays each round back to the callbacks and
    Stop to the ServerApp (flower_progress.py).
    """

    def run(
        self,
        data: Mnist,
        on_start: Callable[[FederatedRun], None] | None = None,
        on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FederatedRun:
        if data is not load_mnist():
            raise EngineError(
                "The flower engine trains in Flower's own processes, which read the shipped MNIST (assets/mnist); "
                "it cannot train on other data."
            )
        _wait_for_slot(should_stop)
        try:
            with tempfile.TemporaryDirectory(prefix="fed-flower-") as folder:  # mode 0700: this account only
                return simulate(
                    self.config,
                    Path(folder),
                    ProgressReader(Path(folder), self.config, on_start, on_round),
                    should_stop,
                )
        finally:
            _simulation_slot.release()


def simulate(
    config: TrainConfig, folder: Path, progress: ProgressReader, should_stop: Callable[[], bool] | None = None
) -> FederatedRun:
    """Submit ``config`` to a simulation SuperLink in ``folder`` and follow its rounds through ``progress``.

    Ray's processes get a fresh token and stay on loopback (ray_guard.py), like the SuperLink (flower_superlink.py).
    """
    # The run's processes train and evaluate with the threads this one was given (the job sets them per run).
    env = {**ray_environment(), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with LocalSuperLink(folder, simulation=True, extra_env=env) as link:
        link.submit({**run_config_of(config), ENGINE_DIR: str(folder)}, federation_config(config.workers))
        return follow(link, progress, should_stop)


def follow(link: LocalSuperLink, progress: ProgressReader, should_stop: Callable[[], bool] | None) -> FederatedRun:
    """Replay the run's rounds as they end; pass Stop on; fail if the run dies silently or a stranger's run appears."""
    submitted, ours, stop_asked = time.monotonic(), None, None
    while not progress.poll():
        ours = _only_run(link, ours)
        if ours is None and time.monotonic() - submitted > CONNECT_SECONDS:
            raise FlowerRunFailed(f"The Flower simulation did not start: {_log_tail(link)}")
        if ours is not None and not _alive(ours) and not progress.poll():
            raise FlowerRunFailed(f"The Flower simulation ended without a result: {_log_tail(link)}")
        if should_stop and should_stop() and stop_asked is None:
            progress.request_stop()
            stop_asked = time.monotonic()
        if stop_asked is not None and time.monotonic() - stop_asked > STOP_SECONDS:
            raise TrainingStopped()  # the ServerApp did not answer in time: leaving the SuperLink ends it
        time.sleep(POLL_SECONDS)
    _only_run(link, ours)  # a run submitted while the last events were replayed is refused too
    return progress.result()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _only_run(link: LocalSuperLink, ours: psutil.Process | None) -> psutil.Process | None:
    """This run's ``flwr-simulation`` process (the first one seen); raises if the SuperLink runs any other."""
    simulations = link.simulations()
    ours = ours or (simulations[0] if len(simulations) == 1 else None)
    if any(ours is None or p.pid != ours.pid for p in simulations):
        raise FlowerClientError(
            f"Another run was submitted to this run's Flower SuperLink (127.0.0.1, port {link.port}) by someone "
            "else on this machine; the run and everything it started were stopped."
        )
    return ours


def serve_simulation(grid: Grid, config: TrainConfig, folder: Path) -> None:
    """The ServerApp's main in a simulation: ``run_federated`` with its events and Stop going through ``folder``.

    The virtual SuperNodes read their shards from ``folder`` too (flower_pool_factory writes them there).
    """
    progress = ProgressWriter(folder)
    try:
        run_federated(
            config,
            load_mnist(),
            flower_pool_factory(grid, folder),
            progress.on_start,
            progress.on_round,
            progress.should_stop,
        )
    except TrainingStopped as exc:
        progress.end(STOPPED, str(exc))
        return
    except Exception as exc:
        progress.end(FAILED, str(exc) or type(exc).__name__, isinstance(exc, UserError))
        raise
    progress.end(DONE)


def node_shard_file(context: Context) -> str:
    """A SuperNode's shard file: its own (``shard-file``, deployed) or its partition's in the run's folder."""
    if SHARD_FILE in context.node_config:
        return str(context.node_config[SHARD_FILE])
    return os.path.join(str(context.run_config[ENGINE_DIR]), shard_file_name(int(context.node_config[PARTITION_ID])))


def federation_config(workers: int) -> dict:
    """The Simulation Runtime's settings (``flwr run --federation-config``): one virtual SuperNode per worker, one
    core each so nodes train side by side, Ray sized for this machine and quiet (Flower starts it without its
    dashboard, one more server to expose)."""
    return {
        "num-supernodes": workers,
        "backend": "ray",
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0,
        "init-args-num-cpus": os.cpu_count() or 1,
        "init-args-num-gpus": 0,
        "init-args-logging-level": "ERROR",
        "init-args-log-to-driver": False,
    }


def _wait_for_slot(should_stop: Callable[[], bool] | None) -> None:
    while not _simulation_slot.acquire(timeout=POLL_SECONDS * 5):
        if should_stop and should_stop():
            raise TrainingStopped()


def _log_tail(link: LocalSuperLink, lines: int = 20) -> str:
    log = link.workdir / "superlink.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "no log"

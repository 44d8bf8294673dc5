"""Secure aggregation on the Flower engine: Flower's own SecAgg+ (``SecAggPlusWorkflow`` with ``secaggplus_mod``).

A secure round replaces the one train Message per worker by the four stages of Flower's workflow, each a
train Message to every sampled worker: *setup* (each worker makes two ECDH P-384 key pairs), *share keys*
(Shamir shares of its secrets, encrypted for its peers), *collect masked vectors* (the worker trains, then
sends its update quantized and masked) and *unmask* (the shares that remove the masks of the sum, and of
workers that dropped out after sharing). On the worker the ClientApp hands every stage to
``secaggplus_mod`` (flower_engine.py); :func:`train_reply` is what the mod calls to train. On the server,
:func:`secure_round` runs the workflow with what it asks for: a LegacyContext whose strategy
(:class:`RoundStrategy`) gives it fed_core's sampled workers and their LocalTasks and takes back the
unmasked aggregate, and a grid (:class:`RoundGrid`) that waits for replies as FlowerPool does and notes
what the server received. Sampling, partition, server optimizer and evaluation stay fed_core's.

**Weighting.** Flower's workflow weights each update by the ``num_examples`` of its reply, which travels in
plaintext, so the server would read every worker's count. Here every worker reports ``num_examples = 1``
and masks two arrays, ``[n * delta / s, code(n)]`` (``s`` the run's mean shard size, ``code`` in
:func:`count_code`). Flower then takes their plain mean over the K survivors, which gives
``sum n`` (exactly: ``code(n)`` quantizes to ``n`` with no rounding) and the FedAvg average
``sum n delta / sum n``: the same weights as the other engines, and the server learns only the sums.

**Precision.** Values are quantized to 2^25 steps over [-8, 8] (Flower's clipping range; its default
2^22 steps would do too, 2^25 is the finest that keeps the sum of 127 workers under the 2^32 modulus), so
an average is within about 5e-7 / (mean n / s) of the plain one per entry, with stochastic rounding.
A worker whose weighted update leaves [-8, 8] fails rather than be clipped; it counts as dropped.

**Local statistics.** A worker's loss before and after local training and its local accuracy are masked
too, as a third array ``n * stats / (s * STATS_SCALE)``, so the server learns only their example-weighted
means over the survivors; the reply's plaintext metrics stay empty.

**Too few workers.** A round of fewer than three sampled workers is refused before any message, and the
workflow's threshold is at least three (secagg.default_threshold), so Flower itself releases no sum of
fewer than three survivors: the sum of one update is that update, and of two, each worker reads the other's.

**What the server holds:** each survivor's masked vector and the unmasked sums, and which workers sent
one. Flower's masks come from 32-bit seeds, which weakens all this: flower_mask_seed.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fed_core.config import TrainConfig
from fed_core.engines.worker_job import LocalTask, train_local
from fed_core.federation.aggregation import LOCAL_STATS
from fed_core.privacy.policy import privacy_for
from fed_core.privacy.secagg import default_group_size, default_threshold, too_few_workers
from fed_core.vocabulary import Aggregate

CLIPPING_RANGE = 8.0  # Flower's default: every masked value lies in [-8, 8]
QUANTIZATION_RANGE = 2**25  # steps over the clipping range
MODULUS_RANGE = 2**32  # masks and sums are modulo this
WEIGHT_SCALE = "weight-scale"  # FitIns config key: s, the count that weighs 1
STATS_SCALE = 16.0  # local statistics are masked divided by this, so a loss up to 128 (at n = s) fits [-8, 8]

Exchange = Callable[[list[Message], float | None], list[Message]]


class UpdateOutOfRange(ValueError):
    """A weighted update has an entry outside Flower's clipping range: masking it would clip it."""


# --- worker side -------------------------------------------------------------------------------------


def count_code(num_examples: int) -> float:
    """The value Flower's quantization turns into exactly ``num_examples`` (no stochastic rounding)."""
    return num_examples * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) - CLIPPING_RANGE


def weighted_input(delta: np.ndarray, num_examples: int, weight_scale: float, stats: np.ndarray) -> list[np.ndarray]:
    """What a worker gives ``secaggplus_mod`` to mask: its update times n / s, the code of n, and its local
    statistics (loss before, loss after, accuracy) times n / (s * STATS_SCALE).

    Statistics a worker keeps to itself (NaN, under example-level DP) are masked as zeros: the server
    releases no mean of them for such runs.
    """
    factor = num_examples / weight_scale
    weighted = delta.astype(np.float64) * factor
    weighted_stats = np.nan_to_num(np.asarray(stats, dtype=np.float64)) * (factor / STATS_SCALE)
    for what, values, remedy in (
        ("the update", weighted, "lower the learning rate"),
        ("the local loss", weighted_stats, "the local training diverged"),
    ):
        peak = float(np.abs(values).max(initial=0.0))
        if peak > CLIPPING_RANGE or num_examples > QUANTIZATION_RANGE:
            raise UpdateOutOfRange(
                f"{what} weighted by {num_examples} / {weight_scale:g} examples reaches {peak:.3g}, outside "
                f"SecAgg+'s clipping range of ±{CLIPPING_RANGE:g}: {remedy}."
            )
    return [weighted, np.array([count_code(num_examples)]), weighted_stats]


def train_reply(msg: Message, images: torch.Tensor, labels: torch.Tensor) -> Message:
    """Stage 'collect masked vectors' on a worker: train, and reply with the weighted update for the mod to mask.

    ``secaggplus_mod`` masks the reply's parameters and clears them before the reply leaves the node; the
    local statistics travel among them, masked, and the reply's plaintext metrics stay empty.
    """
    config = dict(msg.content.config_records["fitins.config"])
    parameters = compat.arrayrecord_to_parameters(msg.content.array_records["fitins.parameters"], keep_input=True)
    (global_weights,) = parameters_to_ndarrays(parameters)
    update = train_local(LocalTask.from_dict(config), torch.from_numpy(global_weights), images, labels)
    stats = np.array([update.loss_before, update.loss_after, update.accuracy_after])
    arrays = weighted_input(update.delta.numpy(), update.num_examples, float(config[WEIGHT_SCALE]), stats)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# --- server side -------------------------------------------------------------------------------------


@dataclass
class SecureRound:
    """One round's aggregate as the server has it, with nothing of any single worker's update."""

    average: torch.Tensor | None  # float32 [P]: FedAvg of the survivors' updates; None if refused
    total_examples: int  # the survivors' examples (0 if refused)
    survivors: list[int]  # the workers whose masked vectors are in the sum
    dropped: dict[int, str]  # sampled worker lost during the protocol -> why
    received: torch.Tensor | None  # float32 [P]: the first survivor's masked vector, read as its update
    upload_bytes: float  # mean bytes a sampled worker sent over the four stages
    refused: str | None = None  # why no sum came out
    local_means: dict[str, float] | None = None  # the survivors' example-weighted local statistics, if released

    def as_aggregate(self) -> Aggregate:
        """What fed_core's server loop takes from any secure round: no update or statistic of any single worker."""
        reports = [{"worker": w, **dict.fromkeys(LOCAL_STATS, float("nan"))} for w in self.survivors]
        return Aggregate(
            self.average,
            reports,
            None,
            None,
            self.received,
            None,
            self.upload_bytes,
            self.dropped,
            self.refused,
            self.local_means,
        )


@dataclass(frozen=True)
class WorkerNode:
    """What the workflow calls a client proxy: it only needs the node id."""

    node_id: int
    worker: int


class RoundStrategy:
    """The two Strategy hooks SecAggPlusWorkflow calls: fed_core's sampled workers go in, the sum comes out."""

    def __init__(self, config: TrainConfig, workers: list[int], nodes: dict[int, int], round_idx: int) -> None:
        self.config = config
        self.proxies = [WorkerNode(nodes[w], w) for w in workers]
        self.round_idx = round_idx
        self.weight_scale = config.train_size / config.workers
        self.aggregate: list[np.ndarray] | None = None
        self.survivors: list[int] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager) -> list[tuple]:
        return [
            (proxy, FitIns(parameters, {**self._task(proxy.worker), WEIGHT_SCALE: self.weight_scale}))
            for proxy in self.proxies
        ]

    def aggregate_fit(self, server_round: int, results: list[tuple], failures: list) -> tuple[None, dict]:
        """Keep the unmasked mean (every result carries it) and who survived."""
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        self.survivors = sorted(proxy.worker for proxy, _ in results)
        return None, {}

    def _task(self, worker: int) -> dict:
        return LocalTask.for_round(self.config, worker, self.round_idx).to_dict()


@dataclass
class RoundGrid:
    """The one Grid method SecAggPlusWorkflow calls, on FlowerPool's polling; it notes what the server received."""

    exchange: Exchange
    errors: dict[int, str] = field(default_factory=dict)  # node -> why it left the protocol
    masked: dict[int, list[bytes]] = field(default_factory=dict)  # node -> its masked vector
    bytes_up: int = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = self.exchange(messages, timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors.setdefault(node, reply.error.reason)
                continue
            self.bytes_up += recorddict_to_proto(reply.content).ByteSize()  # as serialized on the wire
            configs = reply.content.config_records[RECORD_KEY_CONFIGS]
            if Key.MASKED_PARAMETERS in configs:
                self.masked[node] = list(configs[Key.MASKED_PARAMETERS])
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in messages:
            if message.metadata.dst_node_id not in answered:
                self.errors.setdefault(message.metadata.dst_node_id, f"no reply within {timeout:g} s")
        return replies


def workflow_for(sampled: int, timeout: float) -> SecAggPlusWorkflow:
    """Flower's workflow with fed_core's groups and thresholds (secagg.py): everyone up to ~10, a majority, >= 3.

    ``sampled`` is at least 3 (secure_round refuses fewer).
    """
    group = default_group_size(sampled)
    # Flower takes an integer threshold only below the group size; as a share of the group, any threshold.
    return SecAggPlusWorkflow(
        group,
        default_threshold(group) / group,
        max_weight=1.0,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=timeout,
    )


def secure_round(
    exchange: Exchange,
    nodes: dict[int, int],
    config: TrainConfig,
    global_vector: torch.Tensor,
    workers: list[int],
    round_idx: int,
    timeout: float,
) -> SecureRound:
    """Train ``workers`` (worker -> node id in ``nodes``) and aggregate them with Flower's SecAgg+."""
    too_few = too_few_workers(len(workers), "sampled")
    if too_few:
        return SecureRound(None, 0, [], {}, None, 0.0, refused=too_few)
    grid = RoundGrid(exchange)
    strategy = RoundStrategy(config, workers, nodes, round_idx)
    workflow_for(len(workers), timeout)(grid, _legacy_context(strategy, global_vector, round_idx))
    node_worker = {nodes[w]: w for w in workers}
    dropped = {node_worker[node]: reason for node, reason in grid.errors.items()}
    upload = grid.bytes_up / len(workers)
    if strategy.aggregate is None:
        reason = (
            f"Flower's SecAgg+ released no sum: {len(dropped)} of {len(workers)} workers dropped out "
            f"({'; '.join(f'worker {w}: {why}' for w, why in sorted(dropped.items()))}), too few left to remove the "
            f"masks: every group must keep the threshold of {default_threshold(default_group_size(len(workers)))}, "
            "and a sum of fewer than 3 updates would reveal them."
        )
        return SecureRound(None, 0, [], dropped, None, upload, refused=reason)
    survivors = strategy.survivors
    average, total, means = unweighted(strategy.aggregate, len(survivors), strategy.weight_scale)
    received = masked_as_update(grid.masked[nodes[survivors[0]]])
    released = means if privacy_for(config).releases_local_stats else None  # not un-noised under DP, not even a mean
    return SecureRound(average, total, survivors, dropped, received, upload, local_means=released)


def unweighted(
    aggregate: list[np.ndarray], survivors: int, weight_scale: float
) -> tuple[torch.Tensor, int, dict[str, float]]:
    """(FedAvg average, total examples, weighted means of the local statistics) from Flower's mean of
    ``[n * delta / s, code(n), n * stats / (s * STATS_SCALE)]`` over the survivors."""
    mean_weighted, mean_code, mean_stats = aggregate
    total = round((float(mean_code[0]) + CLIPPING_RANGE) * survivors * QUANTIZATION_RANGE / (2 * CLIPPING_RANGE))
    scale = survivors * weight_scale / total
    means = dict(zip(LOCAL_STATS, (mean_stats * (scale * STATS_SCALE)).tolist()))
    return torch.from_numpy(mean_weighted * scale).float(), total, means


def masked_as_update(masked: list[bytes]) -> torch.Tensor:
    """A masked vector dequantized as if it were a weighted update: what the server could read of one worker."""
    _factor, weighted, *_count_and_stats = (bytes_to_ndarray(b) for b in masked)
    return torch.from_numpy(weighted * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) - CLIPPING_RANGE).float()


def _legacy_context(strategy: RoundStrategy, global_vector: torch.Tensor, round_idx: int) -> LegacyContext:
    """The context the workflow reads the round and the global weights from."""
    server = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(server, strategy=strategy)  # the workflow calls only the hooks RoundStrategy has
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_idx})
    weights = ndarrays_to_parameters([global_vector.numpy()])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(weights, keep_input=True)
    return context

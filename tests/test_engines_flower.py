"""The Flower engine (``flwr run`` on Flower's Simulation Runtime) trains like the in-process one: same partition,
sampling and FedAvg; its rounds reach the page's callbacks and Stop reaches its ServerApp."""

import math
import os
import tomllib
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from uuid import uuid4

import numpy as np
import psutil
import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import bytes_to_ndarray
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key
from flwr.supercore.task_identity import TaskIdentity

from fed_core.config import ConfigError, TrainConfig
from fed_core.engines import EngineError, engine_for, flower_engine
from fed_core.engines.flower_engine import (
    PARTITION_ID,
    FlowerClientError,
    FlowerPool,
    client_app_for,
    flower_pool_factory,
    shard_file_name,
)
from fed_core.engines.flower_mask_seed import find_seeds, first_outputs, fold_seed, mask_from_seed
from fed_core.engines.flower_progress import FAILED, STOPPED, FlowerRunFailed, ProgressReader, ProgressWriter
from fed_core.engines.flower_secagg import (
    CLIPPING_RANGE,
    MODULUS_RANGE,
    QUANTIZATION_RANGE,
    STATS_SCALE,
    SecureRound,
    UpdateOutOfRange,
    count_code,
    weighted_input,
)
from fed_core.engines.flower_superlink import LocalSuperLink
from fed_core.engines.worker_job import LocalTask, train_local
from fed_core.federation.server import Evaluator, partition_for, sample_workers
from fed_core.federation.strategies import fedavg, strategy_for
from fed_core.flower_app.run_config import config_from_run_config, run_config_of
from fed_core.models import new_model
from fed_core.vocabulary import TrainingStopped, flatten, model_params

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(workers=3, rounds=3, train_size=3000, contribution_subset=200, fraction=0.67, seed=3)


def test_flower_reaches_the_inprocess_accuracy_with_the_same_workers_each_round(mnist):
    started, rounds = [], []
    flower = engine_for(TrainConfig(engine="flower", **SMALL)).run(
        mnist,
        on_start=started.append,
        on_round=lambda run, record: rounds.append(record.round),
    )
    inprocess = engine_for(TrainConfig(**SMALL)).run(mnist)

    assert len(started) == 1 and rounds == [1, 2, 3]  # the page's callbacks see every round
    assert [r.sampled for r in flower.history] == [r.sampled for r in inprocess.history]
    assert any(len(r.sampled) < 3 for r in flower.history), "fraction C should leave workers out"
    assert flower.label_histogram == inprocess.label_histogram
    for f, i in zip(flower.history, inprocess.history):
        assert f.test_accuracy == pytest.approx(i.test_accuracy, abs=0.005)
        assert [w["examples"] for w in f.workers] == [w["examples"] for w in i.workers]
    assert flower.history[-1].test_accuracy > 0.7


class RecordingSuperLink(LocalSuperLink):
    """The engine's SuperLink, remembered so a test can look at the processes it started."""

    started: ClassVar[list[LocalSuperLink]] = []

    def __enter__(self) -> LocalSuperLink:
        RecordingSuperLink.started.append(self)
        return super().__enter__()


def test_stop_reaches_the_serverapp_of_a_flwr_run_and_every_process_ends(mnist, monkeypatch):
    monkeypatch.setattr(flower_engine, "LocalSuperLink", RecordingSuperLink)
    RecordingSuperLink.started.clear()
    rounds, processes, commands = [], [], []

    def on_round(run, record):
        rounds.append(record.round)
        processes.extend(RecordingSuperLink.started[0].family())
        commands.extend(" ".join(p.cmdline()[:2]) for p in processes)
        assert len(run.history) == record.round and run.model is not None

    with pytest.raises(TrainingStopped):
        engine_for(TrainConfig(engine="flower", **{**SMALL, "rounds": 5})).run(
            mnist, on_round=on_round, should_stop=lambda: bool(rounds)
        )
    # The ServerApp sees Stop at its next check: after round 1, or after round 2 if the replay of round 1 reached
    # this process only while round 2 was already training (a loaded machine), never later.
    assert rounds in ([1], [1, 2])
    assert any("flower-superlink" in c for c in commands) and any("flwr-simulation" in c for c in commands)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def test_the_flower_engine_refuses_data_its_simulation_cannot_read(tiny_data):
    with pytest.raises(EngineError, match="shipped MNIST"):
        engine_for(TrainConfig(engine="flower", **SMALL)).run(tiny_data)


def test_the_serverapps_events_replay_on_a_mirror_run_with_the_pages_callbacks(tmp_path, tiny_data):
    """What crosses from flwr-simulation to the app: the run's start, each round, the ending, and Stop back."""
    config = TrainConfig(workers=2, rounds=2, train_size=400, contribution_subset=0)
    served, seen = [], []
    writer = ProgressWriter(tmp_path)

    def on_round(run, record):
        writer.on_round(run, record)
        served.append((record, flatten(model_params(run.model)).clone(), run.server_view))
        if record.round == 1:
            ProgressReader(tmp_path, config).request_stop()  # the engine's side asks; the ServerApp's sees it

    with pytest.raises(TrainingStopped):
        engine_for(config).run(tiny_data, on_start=writer.on_start, on_round=on_round, should_stop=writer.should_stop)
    writer.end(STOPPED, "stopped by its owner")

    reader = ProgressReader(tmp_path, config, on_start=lambda run: seen.append("start"))
    reader.on_round = lambda run, record: seen.append((record, flatten(model_params(run.model)), run.server_view))
    assert reader.poll()
    assert seen[0] == "start" and len(seen) == 2 == len(served) + 1
    record, vector, view = seen[1]
    assert repr(record) == repr(served[0][0]) and torch.equal(vector, served[0][1])  # repr: NaN == NaN
    assert view.worker == served[0][2].worker and torch.equal(view.update, served[0][2].update)
    with pytest.raises(TrainingStopped, match="stopped by its owner"):
        reader.result()


@pytest.mark.parametrize("user_error, raised", [(True, EngineError), (False, FlowerRunFailed)])
def test_a_failed_serverapp_fails_the_run_with_its_message(tmp_path, user_error, raised):
    ProgressWriter(tmp_path).end(FAILED, "Worker 1's ClientApp failed: boom", user_error)
    reader = ProgressReader(tmp_path, TrainConfig())
    assert reader.poll()
    with pytest.raises(raised, match="boom"):
        reader.result()


def test_run_config_of_flwr_run_becomes_a_train_config():
    config = config_from_run_config({"workers": 4, "train-size": 8000, "local-epochs": 2, "out-dir": "/tmp/x"})
    assert (config.workers, config.train_size, config.local_epochs, config.engine) == (4, 8000, 2, "flower")
    with pytest.raises(ConfigError, match="workers"):
        config_from_run_config({"workers": 0})


class SilentGrid:
    """A Grid whose SuperNodes take every message and never answer."""

    def __init__(self, monkeypatch) -> None:
        for name in ("_run_id", "_node_id", "_task_id"):  # what Flower sets in a ServerApp's process
            monkeypatch.setattr(TaskIdentity, name, 1)

    def push_messages(self, messages):
        return [f"message-{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        return []


def test_a_supernode_that_never_replies_ends_the_round_with_a_clear_error(monkeypatch):
    pool = FlowerPool(SilentGrid(monkeypatch), TrainConfig(workers=1, engine="flower"), reply_seconds=0.3)
    pool.nodes = {0: 7}
    with pytest.raises(FlowerClientError, match=r"1 SuperNode\(s\) did not reply within 0.3 s"):
        pool.train(torch.zeros(10), [0], round_idx=1)


def test_a_stop_request_ends_the_wait_for_replies(monkeypatch):
    pool = FlowerPool(SilentGrid(monkeypatch), TrainConfig(workers=1, engine="flower"), should_stop=lambda: True)
    pool.nodes = {0: 7}
    with pytest.raises(TrainingStopped):
        pool.train(torch.zeros(10), [0], round_idx=1)


def test_the_flower_app_declares_every_setting_with_its_default():
    declared = tomllib.loads((ROOT / "fed_core" / "flower_app" / "pyproject.toml").read_text())
    run_config = declared["tool"]["flwr"]["app"]["config"]
    assert set(run_config) == set(run_config_of(TrainConfig())) | {"out-dir", "engine-dir"}, (
        "flwr run refuses undeclared keys"
    )
    assert config_from_run_config(run_config) == TrainConfig(engine="flower")


# --- secure aggregation: Flower's SecAgg+ (flower_secagg.py) ---------------------------------------------

SECURE = dict(workers=3, rounds=2, train_size=3000, contribution_subset=0, seed=3)


def local_updates(config: TrainConfig, data, workers: list[int], vector: torch.Tensor, round_idx: int = 1):
    """The updates the workers would send in the clear: what the server must never hold in a secure run."""
    shards = partition_for(config, data)
    return [
        train_local(
            LocalTask.for_round(config, w, round_idx),
            vector,
            data.train_images[shards[w]],
            data.train_labels[shards[w]],
        )
        for w in workers
    ]


def fedavg_of(updates) -> torch.Tensor:
    return fedavg(torch.stack([u.delta for u in updates]), torch.tensor([u.num_examples for u in updates]))


def initial_vector(config: TrainConfig) -> torch.Tensor:
    return flatten(model_params(new_model(config.model, config.init, config.seed)))


@dataclass
class SecureSimulation:
    accuracies: list[float] = field(default_factory=list)
    rounds: list[SecureRound] = field(default_factory=list)
    dropout_round: SecureRound | None = None
    received: list = field(default_factory=list)  # every reply the ServerApp pulled from the SuperLink


@pytest.fixture(scope="module")
def secure_simulation(mnist, tmp_path_factory) -> SecureSimulation:
    """A secure run of SECURE on in-process SuperNodes, after one round where worker 2 drops out.

    The SuperNodes are Flower's ClientApp with ``secaggplus_mod`` answering in this process (LoopbackGrid, no
    Ray), so the test sees every reply the server pulled. The server loop is fed_core's pieces (sampling,
    the strategy's server update, evaluation) around FlowerPool.run_secure_round: what run_federated does through
    train_aggregate for a secure pool (test_the_server_loop_runs_flowers_secure_aggregation... runs that
    whole loop on Flower's Simulation Runtime).
    """
    config = TrainConfig(engine="flower", secure_aggregation=True, **SECURE)
    out = SecureSimulation()
    shard_dir = tmp_path_factory.mktemp("secure")
    with pytest.MonkeyPatch.context() as patch:
        pool, grid = loopback_pool(patch, shard_dir, config, mnist)
        model = new_model(config.model, config.init, config.seed)
        vector = flatten(model_params(model))
        # Worker 2's data is missing when it comes to train: it leaves after the key stages.
        shard = torch.load(shard_dir / shard_file_name(2), weights_only=True)
        (shard_dir / shard_file_name(2)).unlink()
        out.dropout_round = pool.run_secure_round(vector, [0, 1, 2], round_idx=1)
        torch.save(shard, shard_dir / shard_file_name(2))
        evaluator, optimizer = (
            Evaluator(model, mnist, config),
            strategy_for(config),
        )
        for round_idx in range(1, config.rounds + 1):
            reporting, _ = sample_workers(config, round_idx)
            out.rounds.append(pool.run_secure_round(vector, reporting, round_idx))
            vector = optimizer.step(vector, out.rounds[-1].average)
            out.accuracies.append(evaluator.evaluate(vector)[0])
    out.received = grid.received
    return out


def test_the_server_loop_runs_flowers_secure_aggregation_and_sees_no_single_update(mnist):
    run = engine_for(TrainConfig(engine="flower", secure_aggregation=True, **SECURE)).run(mnist)
    inprocess = engine_for(TrainConfig(**SECURE)).run(mnist)
    assert [r.test_accuracy for r in run.history] == pytest.approx(
        [r.test_accuracy for r in inprocess.history], abs=0.005
    )
    for record in run.history:
        assert record.note is None and len(record.workers) == len(record.sampled)
        assert all(math.isnan(row["update_norm"]) and math.isnan(row["examples"]) for row in record.workers)
        assert all(math.isnan(row["loss_before"]) and math.isnan(row["local_accuracy"]) for row in record.workers)
        assert record.local_means["loss_after"] < record.local_means["loss_before"]  # only the masked means
    assert run.server_view.update is None and run.server_view.received is not None


def test_a_secure_flower_run_reaches_the_inprocess_accuracy(secure_simulation, mnist):
    inprocess = engine_for(TrainConfig(**SECURE)).run(mnist)
    assert secure_simulation.accuracies == pytest.approx([r.test_accuracy for r in inprocess.history], abs=0.005)
    assert secure_simulation.accuracies[-1] > 0.7
    for secure in secure_simulation.rounds:
        assert secure.refused is None and secure.dropped == {}
        assert secure.total_examples == SECURE["train_size"]
        assert secure.survivors == [0, 1, 2]
        assert secure.local_means["loss_after"] < secure.local_means["loss_before"]


def test_the_secure_aggregate_is_the_weighted_fedavg(secure_simulation, mnist):
    config = TrainConfig(**SECURE)
    first = secure_simulation.rounds[0]
    updates = local_updates(config, mnist, [0, 1, 2], initial_vector(config))
    plain = fedavg_of(updates)
    assert (first.average - plain).abs().max() < 1e-5  # quantization steps of 5e-7, stochastically rounded
    assert plain.abs().mean() > 1e-4
    # The workers' own figures come out of the masked sum as example-weighted means, to a few quantization steps.
    total = sum(u.num_examples for u in updates)
    assert first.local_means["loss_before"] == pytest.approx(
        sum(u.loss_before * u.num_examples for u in updates) / total, abs=1e-4
    )
    assert first.local_means["local_accuracy"] == pytest.approx(
        sum(u.accuracy_after * u.num_examples for u in updates) / total, abs=1e-4
    )


def test_the_server_never_holds_an_unmasked_update(secure_simulation, mnist):
    config = TrainConfig(**SECURE)
    replies = [r for r in secure_simulation.received if not r.has_error()]
    assert all(len(record) == 0 for r in replies for record in r.content.array_records.values())
    masked = [
        bytes_to_ndarray(r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS][1])
        for r in replies
        if RECORD_KEY_CONFIGS in r.content.config_records
        and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]
    ]
    assert len(masked) == 2 + 3 * config.rounds  # the dropout round's survivors, then every worker each round
    # No worker's loss or accuracy in the clear: the replies' metrics are empty, the figures travel masked.
    records = [r.content.config_records for r in replies]
    metrics = [dict(record["fitres.metrics"]) for record in records if "fitres.metrics" in record]
    assert len(metrics) == len(masked) and all(m == {} for m in metrics)
    for vector in masked:
        # Unmasked, every quantized entry is below 2^25; masked, they spread over [0, 2^32).
        assert (vector < QUANTIZATION_RANGE).mean() < 0.02
    update = local_updates(config, mnist, [0], initial_vector(config))[0].delta
    seen = secure_simulation.rounds[0].received
    assert abs(torch.corrcoef(torch.stack([seen, update]))[0, 1]) < 0.05


def test_a_round_of_three_that_loses_a_worker_releases_no_sum_of_two(secure_simulation):
    """With two survivors each would read the other's update from the sum: Flower's threshold of 3 refuses it."""
    result = secure_simulation.dropout_round
    assert list(result.dropped) == [2] and "No such file" in result.dropped[2]
    assert result.average is None and "released no sum" in result.refused and "threshold of 3" in result.refused


def test_a_plain_train_is_refused_when_the_run_is_secure(monkeypatch):
    config = TrainConfig(workers=1, engine="flower", secure_aggregation=True)
    pool = FlowerPool(SilentGrid(monkeypatch), config)
    with pytest.raises(FlowerClientError, match="secure aggregation"):
        pool.train(torch.zeros(10), [0], round_idx=1)


def test_silent_supernodes_drop_out_of_a_secure_round_and_stop_ends_the_wait(monkeypatch):
    config = TrainConfig(workers=3, engine="flower", secure_aggregation=True)
    pool = FlowerPool(SilentGrid(monkeypatch), config, reply_seconds=0.3)
    pool.nodes = {0: 7, 1: 8, 2: 9}
    result = pool.run_secure_round(torch.zeros(10), [0, 1, 2], round_idx=1)
    assert result.average is None and result.dropped == {w: "no reply within 0.3 s" for w in (0, 1, 2)}
    pool.should_stop = lambda: True
    with pytest.raises(TrainingStopped):
        pool.run_secure_round(torch.zeros(10), [0, 1, 2], round_idx=1)


def test_counts_are_masked_without_rounding_and_out_of_range_updates_are_refused():
    values = np.array([count_code(n) for n in (1, 999, 60_000)])
    assert quantize([values], CLIPPING_RANGE, QUANTIZATION_RANGE)[0].tolist() == [1, 999, 60_000]
    stats = np.array([2.3, 0.4, 0.9])
    with pytest.raises(UpdateOutOfRange, match=r"the update .* clipping range"):
        weighted_input(np.array([0.1, -5.0]), 2000, 1000, stats)
    with pytest.raises(UpdateOutOfRange, match=r"the local loss .* clipping range"):
        weighted_input(np.array([0.1]), 2000, 1000, np.array([80.0, 0.4, 0.9]))
    weighted, _code, masked_stats = weighted_input(np.array([0.1, -4.0]), 2000, 1000, stats)
    assert weighted.tolist() == [0.2, -8.0]
    assert masked_stats * STATS_SCALE == pytest.approx(2 * stats)
    kept = weighted_input(np.array([0.1]), 2000, 1000, np.array([float("nan")] * 3))[2]  # example-level DP
    assert kept.tolist() == [0.0, 0.0, 0.0]


# In-process SuperNodes (no Ray), for rounds whose worker-side secrets a test must read.


class LoopbackGrid(SilentGrid):
    """SuperNodes in this process: a pushed message runs the ClientApp at once; its reply waits to be pulled."""

    def __init__(self, monkeypatch, shard_files: list[str]) -> None:
        super().__init__(monkeypatch)
        self.app = client_app_for(lambda context: context.node_config["shard"])
        self.contexts = {
            100 + w: Context(1, 100 + w, {PARTITION_ID: w, "shard": path}, RecordDict(), {})
            for w, path in enumerate(shard_files)
        }
        self.waiting: dict[str, Message] = {}
        self.received: list[Message] = []

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            try:  # a copy, as if it crossed the network: the workflow sends one content to several nodes
                reply = self.app(deepcopy(message), self.contexts[message.metadata.dst_node_id])
            except Exception as exc:  # what a SuperNode replies when its ClientApp raises
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc)), reply_to=message)
            self.waiting[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        replies = [self.waiting.pop(i) for i in message_ids if i in self.waiting]
        self.received += replies
        return replies


def loopback_pool(monkeypatch, tmp_path, config: TrainConfig, data) -> tuple[FlowerPool, LoopbackGrid]:
    files = [str(tmp_path / shard_file_name(w)) for w in range(config.workers)]
    grid = LoopbackGrid(monkeypatch, files)
    pool = flower_pool_factory(grid, tmp_path)(None, data, partition_for(config, data), config)
    return pool, grid


THREE = dict(workers=3, train_size=2000, engine="flower", secure_aggregation=True, seed=5)
FOUR = {**THREE, "workers": 4}


def test_rounds_of_fewer_than_three_workers_are_refused_before_any_message(monkeypatch, tmp_path, mnist):
    config = TrainConfig(**THREE)
    pool, grid = loopback_pool(monkeypatch, tmp_path, config, mnist)
    connected = len(grid.received)  # the SuperNodes' answers to "which worker are you?"
    for workers in ([0], [0, 1]):
        result = pool.run_secure_round(initial_vector(config), workers, round_idx=1)
        assert result.average is None and f"at least 3 reporting workers and this round has {len(workers)}" in (
            result.refused
        )
    assert len(grid.received) == connected  # not one message more: no worker trained, nothing was masked


def round_of_four(monkeypatch, folder: Path, data, lost: list[int]) -> SecureRound:
    """A round of FOUR whose ``lost`` workers find no data when they come to train: they leave after the key stages.

    Each round gets its own folder: a SuperNode keeps the shard it read (flower_engine._shard).
    """
    folder.mkdir()
    config = TrainConfig(**FOUR)
    pool, _ = loopback_pool(monkeypatch, folder, config, data)
    for worker in lost:
        (folder / shard_file_name(worker)).unlink()
    return pool.run_secure_round(initial_vector(config), [0, 1, 2, 3], round_idx=1)


def test_a_worker_that_drops_out_of_a_round_of_four_is_left_out_of_the_sum(monkeypatch, tmp_path, mnist):
    result = round_of_four(monkeypatch, tmp_path / "one_lost", mnist, [3])
    config = TrainConfig(**FOUR)
    survivors = local_updates(config, mnist, [0, 1, 2], initial_vector(config))
    assert list(result.dropped) == [3] and result.refused is None and result.survivors == [0, 1, 2]
    assert result.total_examples == sum(u.num_examples for u in survivors)
    assert (result.average - fedavg_of(survivors)).abs().max() < 1e-5
    result = round_of_four(monkeypatch, tmp_path / "two_lost", mnist, [2, 3])  # two left: below the threshold of 3
    assert result.average is None and sorted(result.dropped) == [2, 3] and "released no sum" in result.refused


def test_a_flower_mask_is_one_of_2_to_the_32(monkeypatch, tmp_path, mnist):
    """What Flower's 32-bit mask seeds cost: a server colluding with one worker of three reads another's update.

    The server strips worker 0's self mask with the seed it rebuilds from the unmask stage's shares, as the
    protocol intends, and worker 2 (colluding) hands it the pairwise mask it shares with worker 0. One pairwise
    mask is left, from a 32-bit seed. The test reads the true seed from the workers' state only to search 2^18
    seeds around it instead of all 2^32 (under an hour on one core, ``python -m fed_core.engines.flower_mask_seed``).
    """
    config = TrainConfig(**THREE)
    pool, grid = loopback_pool(monkeypatch, tmp_path, config, mnist)
    pool.run_secure_round(initial_vector(config), [0, 1, 2], round_idx=1)
    stages = [  # (sender, what it sent) for every SecAgg+ reply the server received
        (r.metadata.src_node_id, r.content.config_records[RECORD_KEY_CONFIGS])
        for r in grid.received
        if RECORD_KEY_CONFIGS in r.content.config_records
    ]
    node, peer, colluder = pool.nodes[0], pool.nodes[1], pool.nodes[2]
    (masked,) = [  # worker 0's [weight factor, weighted update, count code, local statistics], masked
        [bytes_to_ndarray(b) for b in sent[Key.MASKED_PARAMETERS]]
        for sender, sent in stages
        if sender == node and Key.MASKED_PARAMETERS in sent
    ]
    shares = [  # of worker 0's self-mask seed, from every survivor in the unmask stage
        share
        for _, sent in stages
        if Key.SHARE_LIST in sent
        for owner, share in zip(sent[Key.NODE_ID_LIST], sent[Key.SHARE_LIST])
        if owner == node
    ]
    shapes = [a.shape for a in masked]

    def pairwise_key(owner: int, other: int) -> bytes:
        state = SecAggPlusState(**dict(grid.contexts[owner].state.config_records[RECORD_KEY_STATE]))
        return generate_shared_key(
            bytes_to_private_key(state.sk1), bytes_to_public_key(state.public_keys_dict[other][0])
        )

    def sign(other: int) -> int:
        return 1 if node > other else -1  # secaggplus_mod adds the pairwise mask for the larger node id

    self_mask = pseudo_rand_gen(combine_shares(shares), MODULUS_RANGE, shapes)
    colluders_mask = pseudo_rand_gen(pairwise_key(colluder, node), MODULUS_RANGE, shapes)
    unmasked = [(m - s - sign(colluder) * c) % MODULUS_RANGE for m, s, c in zip(masked, self_mask, colluders_mask)]
    first_entry = sign(peer) * (int(unmasked[0][0]) - QUANTIZATION_RANGE) % MODULUS_RANGE  # the factor is 2^25

    true_seed = fold_seed(pairwise_key(node, peer))
    window = max(0, true_seed - 2**17)

    def stripped(seed: int) -> list[np.ndarray]:
        mask = mask_from_seed(seed, MODULUS_RANGE, shapes)
        return [(u - sign(peer) * m) % MODULUS_RANGE for u, m in zip(unmasked, mask)]

    # Of the seeds whose mask starts right, the one that leaves every entry a quantized value in [0, 2^25].
    (seed,) = [
        c for c in find_seeds(first_entry, window, window + 2**18) if (stripped(c)[1] <= QUANTIZATION_RANGE).all()
    ]
    assert seed == true_seed and len(pairwise_key(node, peer)) == 44  # 352 bits of key, 32 bits of mask
    read = stripped(seed)[1] * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) - CLIPPING_RANGE
    update = local_updates(config, mnist, [0], initial_vector(config))[0]
    truth = update.delta.double().numpy() * update.num_examples / (config.train_size / config.workers)
    assert np.abs(read - truth).max() <= 2 * CLIPPING_RANGE / QUANTIZATION_RANGE + 1e-9  # one quantization step


def test_a_mask_depends_only_on_its_secret_folded_to_32_bits():
    secret = os.urandom(32)
    twin = bytes(a ^ b for a, b in zip(secret, bytes(4) * 2 + b"\x5a" * 8 + bytes(16)))  # the same XOR fold
    assert twin != secret and fold_seed(twin) == fold_seed(secret)
    shapes = [(1,), (1000,)]
    mask = pseudo_rand_gen(secret, MODULUS_RANGE, shapes)
    assert all((a == b).all() for a, b in zip(mask, pseudo_rand_gen(twin, MODULUS_RANGE, shapes)))
    assert all((a == b).all() for a, b in zip(mask, mask_from_seed(fold_seed(secret), MODULUS_RANGE, shapes)))
    seeds = np.array([0, 1, 5489, 2**32 - 1, fold_seed(secret)], dtype=np.uint64)
    firsts = [mask_from_seed(int(s), MODULUS_RANGE, [(1,)])[0][0] for s in seeds]
    assert first_outputs(seeds).tolist() == firsts

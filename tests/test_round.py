"""The server loop's wiring, with a pool whose updates are known in advance: sampling, dropout, the server
optimizer and contribution scoring, checked against hand computations."""

import math

import pytest
import torch

from fed_core.config import TrainConfig
from fed_core.engines.inprocess import InProcessPool
from fed_core.federation.server import partition_for, run_federated
from fed_core.models import new_model
from fed_core.vocabulary import WorkerUpdate, flatten, model_params

SMALL = dict(train_size=1000, contribution_subset=100, batch_size=32)


class FixedPool:
    """Worker w always proposes the update (w + 1) * 0.01 on every weight, from 10 * (w + 1) examples."""

    def __init__(self, model, data, shards, config, should_stop=None) -> None:
        self.calls: list[list[int]] = []

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]:
        self.calls.append(workers)
        return [
            WorkerUpdate(w, 10 * (w + 1), torch.full_like(global_vector, 0.01 * (w + 1)), 1.0, 0.5, 0.9)
            for w in workers
        ]


def run_with_fixed_pool(config: TrainConfig, data):
    pools: list[FixedPool] = []

    def factory(*args):
        pools.append(FixedPool(*args))
        return pools[-1]

    starts = []
    run = run_federated(
        config, data, factory, on_start=lambda run: starts.append(flatten(model_params(run.model)).clone())
    )
    first = starts[0]
    last = torch.cat([p.detach().flatten() for p in run.model.parameters()])
    return run, pools[0], first, last


def test_server_momentum_accumulates_the_averaged_updates(tiny_data):
    config = TrainConfig(workers=2, rounds=2, server_lr=0.5, server_momentum=0.5, **SMALL)
    _, _, first, last = run_with_fixed_pool(config, tiny_data)
    average = (10 * 0.01 + 20 * 0.02) / 30  # FedAvg by examples
    # by hand: v1 = a, v2 = 0.5 a + a; w2 = w0 + 0.5 (v1 + v2)
    assert torch.allclose(last - first, torch.full_like(first, 0.5 * (average + 1.5 * average)), atol=1e-6)


def test_a_round_where_every_sampled_worker_drops_out_keeps_the_model(tiny_data):
    config = TrainConfig(workers=1, rounds=3, dropout=0.9, seed=0, **SMALL)
    run, pool, first, last = run_with_fixed_pool(config, tiny_data)
    empty = [r for r in run.history if r.dropped == [0]]
    assert empty, "with one worker and dropout 0.9 some round should lose everybody"
    assert all(r.workers == [] for r in empty)
    assert len(pool.calls) == 3 - len(empty), "nobody is asked to train in a round where all dropped"
    expected = 0.01 * (3 - len(empty))
    assert torch.allclose(last - first, torch.full_like(first, expected), atol=1e-6)


def test_contribution_scoring_off_reports_nan_and_sums_nothing(tiny_data):
    config = TrainConfig(workers=3, rounds=2, **{**SMALL, "contribution_subset": 0})
    run, *_ = run_with_fixed_pool(config, tiny_data)
    assert all(math.isnan(row["contribution"]) for r in run.history for row in r.workers)
    assert run.to_dict()["cumulative_contributions"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert [row["weight"] for row in run.history[0].workers] == pytest.approx([1 / 6, 2 / 6, 3 / 6])


def test_leave_one_out_scores_a_helpful_update_up_and_its_opposite_down(tiny_data):
    config = TrainConfig(workers=2, rounds=1, **SMALL)
    model = new_model(config.model, config.init, config.seed)
    start = flatten(model_params(model))
    good = InProcessPool(model, tiny_data, partition_for(config, tiny_data), config).train(start, [0], 1)[0].delta

    class OppositeUpdates(FixedPool):
        def train(self, global_vector, workers, round_idx):
            return [WorkerUpdate(0, 100, good, 1.0, 0.5, 0.9), WorkerUpdate(1, 100, -good, 1.0, 0.5, 0.9)]

    run = run_federated(config, tiny_data, OppositeUpdates)
    helpful, harmful = (row["contribution"] for row in run.history[0].workers)
    # Together they cancel; without the helpful one the model takes the harmful step, and the other way round.
    assert helpful > 0 > harmful
    # Shapley shares out the round's gain, here none: what one adds, the other takes away.
    good_value, bad_value = (row["shapley"] for row in run.history[0].workers)
    assert good_value > 0 > bad_value and good_value + bad_value == pytest.approx(0, abs=1e-6)
    assert set(run.to_dict()["cumulative_shapley"]) == {0, 1}

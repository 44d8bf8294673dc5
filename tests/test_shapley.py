import math

import pytest
import torch

from fed_core.config import TrainConfig
from fed_core.federation.server import Evaluator
from fed_core.federation.shapley import (
    SHAPLEY_CI_KEY,
    SHAPLEY_KEY,
    ShapleyResult,
    coalition_accuracy,
    cumulative_shapley,
    exact_shapley,
    leave_one_out,
    sampled_shapley,
    shapley_values,
)
from fed_core.federation.strategies import fedavg, strategy_for
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.vocabulary import flatten, model_params

SHARD_SIZES = (40, 60, 80, 100, 150, 200)  # unequal FedAvg weights


def coalition_game(rule):
    """A value function from a rule on one coalition (a tuple of member indices)."""
    return lambda masks: torch.tensor([float(rule(tuple(torch.nonzero(m).flatten().tolist()))) for m in masks])


def test_exact_values_of_a_known_game():
    # Player 0 scores 1 with anybody else, never alone: it is pivotal in 4 of the 6 orders, the others in 1.
    game = coalition_game(lambda members: 0 in members and len(members) >= 2)
    torch.testing.assert_close(exact_shapley(game, 3), torch.tensor([2 / 3, 1 / 6, 1 / 6]))


def test_sampling_an_additive_game_is_exact_with_a_zero_interval():
    worth = [0.5, -0.25, 2.0, 0.0, 1.0]
    game = coalition_game(lambda members: sum(worth[i] for i in members))
    values, halfwidth = sampled_shapley(game, 5, samples=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(values, torch.tensor(worth))
    torch.testing.assert_close(halfwidth, torch.zeros(5))


@pytest.fixture(scope="module")
def round_parts(tiny_data):
    """A first round of six workers on the tiny data: the start model, the updates and what scores them."""
    config = TrainConfig(contribution_subset=500, batch_size=16, seed=0)
    model = new_model("crypto_cnn", "default", seed=0)
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, config.local)
    shards = list(torch.arange(sum(SHARD_SIZES)).split(SHARD_SIZES))
    global_vector = flatten(model_params(model))
    updates = trainer.train(global_vector, list(range(len(shards))), shards, seeds=list(range(len(shards))))
    deltas = torch.stack([u.delta for u in updates])
    counts = torch.tensor([u.num_examples for u in updates])
    return global_vector, deltas, counts, strategy_for(config), Evaluator(model, tiny_data, config)


def round_gain(global_vector, deltas, counts, optimizer, evaluator) -> float:
    """v(all) - v(empty): subset accuracy of the proposed model minus that of the start model."""
    proposed = optimizer.propose(global_vector, fedavg(deltas, counts))
    accuracies = evaluator.subset_accuracies(torch.stack([proposed, global_vector]))
    return (accuracies[0] - accuracies[1]).item()


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["FedAvg", "FedAvgM"])
def test_exact_values_add_up_to_the_rounds_gain(round_parts, momentum):
    global_vector, deltas, counts, _, evaluator = round_parts
    optimizer = strategy_for(TrainConfig(server_momentum=momentum))
    optimizer.state = deltas.mean(0) if momentum else 0.0  # the velocity, as if earlier rounds had moved the model
    parts = global_vector, deltas, counts, optimizer, evaluator
    result = shapley_values(*parts)
    assert result.exact and result.ci_halfwidth is None
    gain = round_gain(*parts)  # with momentum, v(empty) is still the start model, not a momentum-only step
    assert gain > 0.3  # the round teaches the untrained model a lot: the values are not all trivially zero
    assert result.values.sum().item() == pytest.approx(gain, abs=1e-5)


def test_leave_one_out_is_the_gain_over_the_fedavg_of_the_others(round_parts):
    global_vector, deltas, counts, optimizer, evaluator = round_parts
    scores = leave_one_out(coalition_accuracy(*round_parts), len(deltas))
    proposed = [optimizer.propose(global_vector, fedavg(deltas, counts))]
    for k in range(len(deltas)):
        keep = [i for i in range(len(deltas)) if i != k]
        proposed.append(optimizer.propose(global_vector, fedavg(deltas[keep], counts[keep])))
    accuracies = evaluator.subset_accuracies(torch.stack(proposed))
    torch.testing.assert_close(scores, accuracies[0] - accuracies[1:])


def test_identical_workers_get_identical_values(round_parts):
    global_vector, deltas, counts, optimizer, evaluator = round_parts
    twins = torch.cat([deltas[:4], deltas[1:2]]), torch.cat([counts[:4], counts[1:2]])
    values = shapley_values(global_vector, *twins, optimizer, evaluator).values
    assert values[1].item() == pytest.approx(values[4].item(), abs=1e-6)


def test_worker_with_no_examples_is_a_null_player(round_parts):
    # FedAvg weighs updates by examples, so a zero update with examples is NOT null: it pulls the average
    # towards zero and changes the model. A worker with no examples has no weight: whatever its update,
    # every coalition's aggregate, and so its value, is the same with or without it.
    global_vector, deltas, counts, optimizer, evaluator = round_parts
    idle = torch.cat([deltas[:3], torch.randn(1, deltas.shape[1])]), torch.cat([counts[:3], torch.tensor([0])])
    with_idle = shapley_values(global_vector, *idle, optimizer, evaluator).values
    without = shapley_values(global_vector, deltas[:3], counts[:3], optimizer, evaluator).values
    assert with_idle[3].item() == 0.0
    torch.testing.assert_close(with_idle[:3], without)


def test_sampled_values_agree_with_exact_within_their_interval(round_parts):
    exact = shapley_values(*round_parts)
    sampled = shapley_values(*round_parts, samples=60, generator=torch.Generator().manual_seed(1), exact_max_workers=4)
    assert not sampled.exact
    assert (sampled.ci_halfwidth > 0).all()
    assert ((sampled.values - exact.values).abs() <= sampled.ci_halfwidth).all()
    assert sampled.values.sum().item() == pytest.approx(round_gain(*round_parts), abs=1e-5)


def test_the_interval_covers_the_exact_value_about_95_percent_of_the_time(round_parts):
    """Over many seeds, not one: each single check fails 5% of the time by design."""
    players = len(round_parts[1])
    weights = 1 << torch.arange(players)
    table = coalition_accuracy(*round_parts)((torch.arange(2**players).unsqueeze(1) & weights) > 0)

    def game(masks: torch.Tensor) -> torch.Tensor:
        return table[(masks.long() * weights).sum(1)]

    exact = exact_shapley(game, players)
    covered = [
        (values - exact).abs() <= halfwidth
        for values, halfwidth in (
            sampled_shapley(game, players, samples=60, generator=torch.Generator().manual_seed(seed))
            for seed in range(100)
        )
    ]
    assert 0.9 <= torch.stack(covered).float().mean().item() <= 0.99


def test_no_test_subset_means_no_values(round_parts, tiny_data):
    global_vector, deltas, counts, optimizer, _ = round_parts
    evaluator = Evaluator(new_model("crypto_cnn", "default", 0), tiny_data, TrainConfig(contribution_subset=0))
    assert shapley_values(global_vector, deltas, counts, optimizer, evaluator).values.isnan().all()


def test_rows_and_their_sum_over_rounds():
    exact = ShapleyResult(torch.tensor([0.25, -0.5]), None, True)
    assert exact.rows() == [{SHAPLEY_KEY: 0.25, SHAPLEY_CI_KEY: None}, {SHAPLEY_KEY: -0.5, SHAPLEY_CI_KEY: None}]
    rounds = [
        [{"worker": 0, **exact.rows()[0]}, {"worker": 2, **exact.rows()[1]}],
        [{"worker": 0, SHAPLEY_KEY: 0.5, SHAPLEY_CI_KEY: 0.3}, {"worker": 1, SHAPLEY_KEY: 0.1, SHAPLEY_CI_KEY: 0.4}],
        [{"worker": 0, SHAPLEY_KEY: 0.25, SHAPLEY_CI_KEY: 0.4}, {"worker": 1, SHAPLEY_KEY: math.nan}],
    ]
    totals = cumulative_shapley(3, rounds)
    assert totals[0] == pytest.approx((1.0, 0.5))  # sqrt(0.3^2 + 0.4^2)
    assert totals[1] == pytest.approx((0.1, 0.4))
    assert totals[2] == pytest.approx((-0.5, 0.0))

import threading

import pytest
import torch

from fed_core.config import ConfigError, TrainConfig, estimate_seconds, problems
from fed_core.data.mnist import Mnist
from fed_core.engines import engine_for
from fed_core.federation.server import partition_for, sample_workers
from fed_core.vocabulary import TrainingDiverged, TrainingStopped

SMALL = dict(train_size=2000, contribution_subset=200, batch_size=32, lr=0.02)


def test_sampling_takes_a_fraction_at_least_one_and_is_seeded():
    config = TrainConfig(workers=20, fraction=0.25, seed=5)
    reporting, dropped = sample_workers(config, 1)
    assert len(reporting) == 5 and dropped == []
    assert sample_workers(config, 1) == (reporting, dropped)
    assert sample_workers(config, 2) != (reporting, dropped)
    assert len(sample_workers(TrainConfig(workers=20, fraction=0.01), 1)[0]) == 1


def test_dropout_removes_sampled_workers_at_about_the_rate():
    config = TrainConfig(workers=100, fraction=1.0, dropout=0.3)
    dropped = sum(len(sample_workers(config, r)[1]) for r in range(1, 21))
    assert 0.25 < dropped / 2000 < 0.35


def test_run_learns_and_is_deterministic(tiny_data):
    config = TrainConfig(workers=4, rounds=3, **SMALL)
    first = engine_for(config).run(tiny_data)
    second = engine_for(config).run(tiny_data)
    accuracies = [r.test_accuracy for r in first.history]
    assert accuracies == [r.test_accuracy for r in second.history]
    assert accuracies[-1] > 0.9
    assert torch.equal(next(first.model.parameters()), next(second.model.parameters()))
    rows = first.history[-1].workers
    assert [r["worker"] for r in rows] == [0, 1, 2, 3]
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert all(r["loss_after"] < r["loss_before"] for r in first.history[0].workers)


def test_dropped_workers_are_left_out_of_their_round(tiny_data):
    config = TrainConfig(workers=10, rounds=4, dropout=0.5, seed=1, **SMALL)
    run = engine_for(config).run(tiny_data)
    dropped = [w for r in run.history for w in r.dropped]
    assert dropped, "with dropout 0.5 some worker should fail to report"
    for record in run.history:
        assert {row["worker"] for row in record.workers}.isdisjoint(record.dropped)
        assert len(record.workers) + len(record.dropped) == len(record.sampled)


def test_worker_with_shuffled_labels_has_the_lowest_contribution(mnist):
    config = TrainConfig(workers=4, rounds=3, train_size=4000, contribution_subset=1000, seed=0)
    noisy = partition_for(config, mnist)[2]
    labels = mnist.train_labels.clone()
    labels[noisy] = labels[noisy][torch.randperm(len(noisy), generator=torch.Generator().manual_seed(0))]
    poisoned = Mnist(mnist.train_images, labels, mnist.test_images, mnist.test_labels)
    run = engine_for(config).run(poisoned)
    totals = run.to_dict()["cumulative_contributions"]
    assert min(totals, key=totals.get) == 2
    assert totals[2] < 0


def test_diverging_run_is_an_error_not_a_flat_line(tiny_data):
    config = TrainConfig(workers=2, rounds=2, clip_norm=1e9, **{**SMALL, "lr": 10.0})
    with pytest.raises(TrainingDiverged, match="diverged"):
        engine_for(config).run(tiny_data)


def test_stop_request_ends_the_run_within_the_round(tiny_data):
    started, stop = [], threading.Event()
    engine = engine_for(TrainConfig(workers=2, rounds=5, **SMALL))
    with pytest.raises(TrainingStopped):
        engine.run(tiny_data, on_start=started.append, on_round=lambda run, record: stop.set(), should_stop=stop.is_set)
    assert [r.round for r in started[0].history] == [1], "asked to stop after round 1, round 2 never finished"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(workers=0), "workers must be between 1 and 100"),
        (dict(workers=101), "workers must be between 1 and 100"),
        (dict(rounds=-1), "rounds must be between 1 and 200"),
        (dict(rounds=2.5), "rounds must be a whole number"),
        (dict(fraction=0.0), "fraction C"),
        (dict(lr=0), "learning rate"),
        (dict(dropout=1.0), "dropout"),
        (dict(partition="dirichlet", alpha=0), "alpha"),
        (dict(workers=100, train_size=500), "cannot serve 100 workers"),
        (dict(workers=100, partition="shards", shards_per_worker=20, train_size=10_000), "shards"),
    ],
)
def test_out_of_range_settings_are_explained(change, message):
    found = " ".join(problems(TrainConfig(**change)))
    assert message in found
    with pytest.raises(ConfigError):
        engine_for(TrainConfig(**change))


def test_estimate_grows_with_the_work():
    small = estimate_seconds(TrainConfig(workers=10, rounds=10))
    big = estimate_seconds(TrainConfig(workers=100, rounds=200))
    assert 0 < small < big
    assert big > 60  # 200 full passes over MNIST cannot take a minute here

"""The Flower engine (Simulation Engine) trains like the in-process one: same partition, sampling and FedAvg."""

import pytest

from fed_core.config import ConfigError, TrainConfig
from fed_core.engines import engine_for
from fed_core.flower_app.app import config_from_run_config

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


def test_run_config_of_flwr_run_becomes_a_train_config():
    config = config_from_run_config({"workers": 4, "train-size": 8000, "local-epochs": 2, "out-dir": "/tmp/x"})
    assert (config.workers, config.train_size, config.local_epochs, config.engine) == (4, 8000, 2, "flower")
    with pytest.raises(ConfigError, match="workers"):
        config_from_run_config({"workers": 0})

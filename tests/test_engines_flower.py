"""The Flower engine (Simulation Engine) trains like the in-process one: same partition, sampling and FedAvg."""

import tomllib
from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from fed_core.client import TrainingStopped
from fed_core.config import ConfigError, TrainConfig
from fed_core.engines import engine_for
from fed_core.engines.flower_engine import FlowerClientError, FlowerPool
from fed_core.flower_app.app import config_from_run_config, run_config_of

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
    assert set(run_config) == set(run_config_of(TrainConfig())) | {"out-dir"}, "flwr run refuses undeclared keys"
    assert config_from_run_config(run_config) == TrainConfig(engine="flower")

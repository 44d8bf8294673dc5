"""FedProx and SCAFFOLD: local steps and control variates against hand computations, and their settings."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from fed_core.cli.train import config_from_args, register
from fed_core.config import TrainConfig, problems
from fed_core.data.mnist import normalize
from fed_core.engines import engine_for
from fed_core.federation.scaffold import ControlVariates
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, WorkerUpdate, flatten, model_params, unflatten

LR = 0.1


def gradient(model_name: str, vector: torch.Tensor, data, batch: torch.Tensor) -> torch.Tensor:
    """The plain mean cross-entropy gradient of one batch at ``vector``, by torch.autograd."""
    model = new_model(model_name, "default", seed=0)
    params = {n: p.clone().requires_grad_() for n, p in unflatten(vector, model_params(model)).items()}
    logits = torch.func.functional_call(model, params, (normalize(data.train_images[batch]),))
    F.cross_entropy(logits, data.train_labels[batch]).backward()
    return torch.cat([p.grad.flatten() for p in params.values()])


def one_batch_trainer(model_name: str, data, epochs: int, prox_mu: float = 0.0) -> BatchedTrainer:
    """Plain SGD, no clipping in effect, the whole 20-example shard in one batch: one step per epoch."""
    settings = LocalSettings(model_name, epochs, batch_size=20, lr=LR, momentum=0.0, clip_norm=1e6, prox_mu=prox_mu)
    return BatchedTrainer(new_model(model_name, "default", seed=0), data.train_images, data.train_labels, settings)


@pytest.mark.parametrize("model_name", ["crypto_cnn", "fedavg_cnn"])
def test_fedprox_steps_by_hand(tiny_data, model_name):
    """Two steps: the first starts at the global model (no pull), the second is pulled back by mu (w1 - w0)."""
    mu, shard = 0.5, torch.arange(20)
    trainer = one_batch_trainer(model_name, tiny_data, epochs=2, prox_mu=mu)
    w0 = flatten(trainer.template)
    update = trainer.train(w0, [0], [shard], seeds=[0])[0]
    w1 = w0 - LR * gradient(model_name, w0, tiny_data, shard)
    w2 = w1 - LR * (gradient(model_name, w1, tiny_data, shard) + mu * (w1 - w0))
    assert torch.allclose(update.delta, w2 - w0, atol=1e-5)
    plain = one_batch_trainer(model_name, tiny_data, epochs=2).train(w0, [0], [shard], seeds=[0])[0]
    assert not torch.allclose(plain.delta, update.delta, atol=1e-5)  # the term did something


def test_scaffold_step_adds_the_correction_by_hand(tiny_data):
    trainer = one_batch_trainer("crypto_cnn", tiny_data, epochs=1)
    w0 = flatten(trainer.template)
    shards = [torch.arange(20), torch.arange(20, 40)]
    corrections = 0.01 * torch.randn(2, len(w0), generator=torch.Generator().manual_seed(0))
    updates = trainer.train(w0, [0, 1], shards, seeds=[0, 1], corrections=corrections)
    for update, shard, correction in zip(updates, shards, corrections):
        expected = -LR * (gradient("crypto_cnn", w0, tiny_data, shard) + correction)
        assert torch.allclose(update.delta, expected, atol=1e-6)
        assert update.local_steps == 1


def test_scaffold_control_variates_option_two_by_hand(tiny_data):
    """One plain SGD step from c = c_i = 0: c_i+ = (x - y_i) / lr = g_i, and c = (1/N) sum of the g_i."""
    trainer = one_batch_trainer("crypto_cnn", tiny_data, epochs=1)
    w0 = flatten(trainer.template)
    variates = ControlVariates(num_workers=4, num_params=len(w0))
    shards = [torch.arange(20), torch.arange(20, 40)]
    updates = trainer.train(w0, [1, 3], shards, seeds=[0, 1], corrections=variates.corrections([1, 3]))
    variates.update(updates, LR)
    g1, g3 = (gradient("crypto_cnn", w0, tiny_data, s) for s in shards)
    assert torch.allclose(variates.own(1), g1, atol=1e-5) and torch.allclose(variates.own(3), g3, atol=1e-5)
    assert torch.allclose(variates.server, (g1 + g3) / 4, atol=1e-5)
    assert torch.equal(variates.own(0), torch.zeros_like(w0))  # never trained
    # Next round, worker 1 is corrected by c - c_1.
    assert torch.allclose(variates.corrections([1])[0], (g1 + g3) / 4 - g1, atol=1e-5)


def test_scaffold_update_by_hand_with_numbers():
    variates = ControlVariates(num_workers=2, num_params=2)
    variates.server = torch.tensor([1.0, 0.0])
    variates.workers[0] = torch.tensor([0.5, 0.5])
    # c_0+ = c_0 - c + (x - y) / (steps lr) = [0.5, 0.5] - [1, 0] + [0.2, 0.4] / (2 * 0.1) = [0.5, 2.5]
    variates.update([WorkerUpdate(0, 10, torch.tensor([-0.2, -0.4]), 1.0, 0.5, 0.9, local_steps=2)], lr=0.1)
    assert torch.allclose(variates.own(0), torch.tensor([0.5, 2.5]))
    assert torch.allclose(variates.server, torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 2.0]) / 2)


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_runs_with_each_strategy_learn(tiny_data, strategy):
    config = TrainConfig(
        workers=4, rounds=3, train_size=2000, contribution_subset=0, batch_size=32, strategy=strategy, prox_mu=0.1
    )
    run = engine_for(config).run(tiny_data)
    assert run.history[-1].test_accuracy > 0.9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "scaffold", "secure_aggregation": True}, "SCAFFOLD cannot run with secure aggregation"),
        ({"strategy": "scaffold", "dp": "example"}, "SCAFFOLD cannot run with differential privacy"),
        ({"strategy": "scaffold", "dp": "client"}, "SCAFFOLD cannot run with differential privacy"),
        ({"strategy": "scaffold", "engine": "flower"}, "SCAFFOLD runs on the inprocess engine only"),
        ({"strategy": "fedsgd"}, "strategy must be one of fedavg, fedprox, scaffold"),
        ({"prox_mu": -1.0}, "FedProx mu must be in [0, 10]"),
    ],
)
def test_strategy_settings_that_cannot_run_are_explained(change, message):
    assert any(message in p for p in problems(TrainConfig(**change)))


def test_prox_mu_reaches_the_workers_only_under_fedprox():
    assert TrainConfig(strategy="fedprox", prox_mu=0.3).local.prox_mu == 0.3
    assert TrainConfig(strategy="fedavg", prox_mu=0.3).local.prox_mu == 0.0
    assert problems(TrainConfig(strategy="fedprox", secure_aggregation=True, dp="client")) == []


def test_cli_flags_choose_the_strategy():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--strategy", "fedprox", "--prox-mu", "0.2"])
    config = config_from_args(args)
    assert (config.strategy, config.prox_mu) == ("fedprox", 0.2)
    assert config_from_args(parser.parse_args(["train"])).strategy == "fedavg"

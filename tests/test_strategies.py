"""The strategies: FedProx's and SCAFFOLD's local steps, SCAFFOLD's control variates, FedAdam's and FedYogi's server
steps, against hand computations; which settings each can run with; the CLI and runs that learn."""

import argparse
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

from fed_core.cli.train import config_from_args, register
from fed_core.config import DP_MODES, TrainConfig, problems
from fed_core.data.mnist import normalize
from fed_core.engines import ENGINES, engine_for
from fed_core.federation.strategies import STRATEGIES, strategy_for
from fed_core.federation.strategies.base import BETA_1, BETA_2, TAU
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, WorkerUpdate, flatten, model_params, unflatten
from ui import session

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


class OneBatchPool:
    """The workers' side of an in-process pool, on the one-batch trainer (what InProcessPool.train does)."""

    def __init__(self, trainer: BatchedTrainer, shards: dict[int, torch.Tensor]) -> None:
        self.trainer, self.shards = trainer, shards

    def train(self, global_vector, workers, round_idx, corrections=None):
        shards = [self.shards[w] for w in workers]
        return self.trainer.train(global_vector, workers, shards, list(workers), corrections=corrections)


def test_scaffold_control_variates_option_two_by_hand(tiny_data):
    """One plain SGD step from c = c_i = 0: c_i+ = (x - y_i) / lr = g_i, and c = (1/N) sum of the g_i."""
    trainer = one_batch_trainer("crypto_cnn", tiny_data, epochs=1)
    w0 = flatten(trainer.template)
    scaffold = strategy_for(TrainConfig(strategy="scaffold", workers=4, lr=LR, momentum=0.0))
    shards = {1: torch.arange(20), 3: torch.arange(20, 40)}
    workers = scaffold.workers(OneBatchPool(trainer, shards))
    workers.train(w0, [1, 3], round_idx=1)
    g1, g3 = (gradient("crypto_cnn", w0, tiny_data, s) for s in shards.values())
    assert torch.allclose(scaffold.own(1, w0), g1, atol=1e-5) and torch.allclose(scaffold.own(3, w0), g3, atol=1e-5)
    assert torch.equal(torch.as_tensor(scaffold.server), torch.tensor(0.0))  # c moves only once the round is over
    scaffold.after_round()
    assert torch.allclose(scaffold.server, (g1 + g3) / 4, atol=1e-5)
    assert torch.equal(scaffold.own(0, w0), torch.zeros_like(w0))  # never trained
    # Next round, worker 1 is corrected by c - c_1.
    assert torch.allclose(scaffold.corrections(w0, [1])[0], (g1 + g3) / 4 - g1, atol=1e-5)


def test_scaffold_update_by_hand_with_numbers():
    scaffold = strategy_for(TrainConfig(strategy="scaffold", workers=2, lr=0.1, momentum=0.0))
    scaffold.server = torch.tensor([1.0, 0.0])
    scaffold.variates[0] = torch.tensor([0.5, 0.5])
    # c_0+ = c_0 - c + (x - y) / (steps lr) = [0.5, 0.5] - [1, 0] + [0.2, 0.4] / (2 * 0.1) = [0.5, 2.5]
    scaffold.report([WorkerUpdate(0, 10, torch.tensor([-0.2, -0.4]), 1.0, 0.5, 0.9, local_steps=2)])
    assert torch.allclose(scaffold.own(0, torch.zeros(2)), torch.tensor([0.5, 2.5]))
    scaffold.after_round()  # c += (1/N) (c_0+ - c_0) = [1, 0] + [0, 2] / 2
    assert torch.allclose(scaffold.server, torch.tensor([1.0, 1.0]))


# Two server rounds on a three-weight model: x0, and the round averages d1 then d2. The third weight's second
# update is far smaller than its first, where Yogi's second moment and Adam's part ways.
X0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
D1 = torch.tensor([0.2, -0.1, 1.0], dtype=torch.float64)
D2 = torch.tensor([-0.1, 0.3, 0.05], dtype=torch.float64)
ETA = 0.1


def test_fedadam_and_fedyogi_constants_are_flowers_defaults():
    assert (BETA_1, BETA_2, TAU) == (0.9, 0.99, 1e-3)


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_adaptive_first_round_by_hand(strategy):
    """From m = v = 0 both take the same first step: m1 = 0.1 d1, v1 = 0.01 d1^2, x1 = x0 + eta m1 / (sqrt v1 + tau)."""
    server = strategy_for(TrainConfig(strategy=strategy, server_lr=ETA))
    x1 = server.step(X0, D1)
    # m1 = [0.02, -0.01, 0.1]; v1 = [0.0004, 0.0001, 0.01]; sqrt(v1) = [0.02, 0.01, 0.1]
    expected = torch.tensor([1.0 + 0.1 * 0.02 / 0.021, -2.0 - 0.1 * 0.01 / 0.011, 0.5 + 0.1 * 0.1 / 0.101])
    torch.testing.assert_close(x1, expected.double())
    m, v = server.state
    torch.testing.assert_close(m, torch.tensor([0.02, -0.01, 0.1]).double())
    torch.testing.assert_close(v, torch.tensor([0.0004, 0.0001, 0.01]).double())


def second_step(m2: list[float], v2: list[float]) -> torch.Tensor:
    """x2 = x1 + eta m2 / (sqrt v2 + tau), x1 the first round's model (test above), written out per weight."""
    x1 = [1.0 + 0.1 * 0.02 / 0.021, -2.0 - 0.1 * 0.01 / 0.011, 0.5 + 0.1 * 0.1 / 0.101]
    return torch.tensor([x + 0.1 * m / (math.sqrt(v) + 0.001) for x, m, v in zip(x1, m2, v2)], dtype=torch.float64)


# m2 = 0.9 m1 + 0.1 d2 = [0.018 - 0.01, -0.009 + 0.03, 0.09 + 0.005], the same for both
M2 = [0.008, 0.021, 0.095]


def test_fedadam_second_round_by_hand():
    # Adam: v2 = 0.99 v1 + 0.01 d2^2 = [0.000396 + 0.0001, 0.000099 + 0.0009, 0.0099 + 0.000025]
    server = strategy_for(TrainConfig(strategy="fedadam", server_lr=ETA))
    x2 = server.step(server.step(X0, D1), D2)
    torch.testing.assert_close(x2, second_step(M2, [0.000496, 0.000999, 0.009925]))
    torch.testing.assert_close(x2, torch.tensor([1.129616, -2.026506, 0.693421]).double(), atol=1e-6, rtol=0)


def test_fedyogi_second_round_by_hand():
    # Yogi: v2 = v1 - 0.01 d2^2 sign(v1 - d2^2). d2^2 = [0.01, 0.09, 0.0025]: the first two exceed v1, so v grows
    # by 0.01 d2^2 (to [0.0005, 0.001]); the third is below v1 = 0.01, so v shrinks by 0.01 d2^2 only (0.009975),
    # where Adam's drops to 0.009925.
    server = strategy_for(TrainConfig(strategy="fedyogi", server_lr=ETA))
    x2 = server.step(server.step(X0, D1), D2)
    torch.testing.assert_close(x2, second_step(M2, [0.0005, 0.001, 0.009975]))
    torch.testing.assert_close(x2, torch.tensor([1.129484, -2.026537, 0.693186]).double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_propose_commits_nothing(strategy):
    """Leave-one-out and Shapley proposals leave the server's state as it was: step after them is unchanged."""
    config = TrainConfig(strategy=strategy, server_lr=0.1, server_momentum=0.0)
    proposing, plain = strategy_for(config), strategy_for(config)
    for server in (proposing, plain):
        server.step(X0, D1)
    proposals = proposing.propose(X0, torch.stack([D2, 2 * D2, D1]))  # a batch of coalitions' averages
    assert proposals.shape == (3, 3)
    torch.testing.assert_close(proposals[1], proposing.propose(X0, 2 * D2))
    torch.testing.assert_close(proposing.step(X0, D2), plain.step(X0, D2))


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_runs_with_each_strategy_learn(tiny_data, strategy):
    config = TrainConfig(
        workers=4, rounds=3, train_size=2000, contribution_subset=0, batch_size=32, strategy=strategy, prox_mu=0.1
    )
    run = engine_for(config).run(tiny_data)
    assert run.history[-1].test_accuracy > 0.9


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_adaptive_runs_learn_real_mnist_at_their_default_eta(mnist, strategy):
    """Four short rounds on real MNIST from the CLI's default eta: accuracy rises round after round."""
    config = TrainConfig(
        workers=5,
        rounds=4,
        train_size=5000,
        contribution_subset=0,
        shapley=False,
        strategy=strategy,
        server_lr=STRATEGIES[strategy].default_server_lr,
    )
    accuracies = [r.test_accuracy for r in engine_for(config).run(mnist).history]
    assert all(later > earlier for earlier, later in pairwise(accuracies)), accuracies
    assert accuracies[-1] > 0.8, accuracies


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "scaffold", "secure_aggregation": True}, "SCAFFOLD cannot run with secure aggregation"),
        ({"strategy": "scaffold", "dp": "example"}, "SCAFFOLD cannot run with differential privacy"),
        ({"strategy": "scaffold", "dp": "client"}, "SCAFFOLD cannot run with differential privacy"),
        ({"strategy": "scaffold", "engine": "flower"}, "SCAFFOLD runs on the inprocess engine only"),
        ({"strategy": "fedsgd"}, "strategy must be one of fedavg, fedprox, scaffold, fedadam, fedyogi"),
        ({"strategy": "fedadam"}, "takes a server learning rate (eta) of at most 0.1, got 1: "),
        ({"strategy": "fedyogi", "server_lr": 0.01, "server_momentum": 0.9}, "keeps its own server momentum"),
        ({"prox_mu": -1.0}, "FedProx mu must be in [0, 10]"),
    ],
)
def test_strategy_settings_that_cannot_run_are_explained(change, message):
    assert any(message in p for p in problems(TrainConfig(**change)))


def test_prox_mu_reaches_the_workers_only_under_fedprox():
    assert TrainConfig(strategy="fedprox", prox_mu=0.3).local.prox_mu == 0.3
    assert TrainConfig(strategy="fedavg", prox_mu=0.3).local.prox_mu == 0.0
    assert problems(TrainConfig(strategy="fedprox", secure_aggregation=True, dp="client")) == []


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_adaptive_strategies_run_wherever_fedavg_runs(strategy):
    """Server-side only: every engine, every privacy mode (under DP the server step is post-processing)."""
    for engine in ENGINES:
        for dp in DP_MODES:
            for secure in (False, True):
                settings = {"engine": engine, "dp": dp, "secure_aggregation": secure, "workers": 5, "server_lr": 0.01}
                assert problems(TrainConfig(strategy=strategy, **settings)) == problems(TrainConfig(**settings))


def test_cli_flags_choose_the_strategy():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--strategy", "fedprox", "--prox-mu", "0.2"])
    config = config_from_args(args)
    assert (config.strategy, config.prox_mu) == ("fedprox", 0.2)
    assert config_from_args(parser.parse_args(["train"])).strategy == "fedavg"


def test_cli_server_lr_defaults_to_the_strategys():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["train", "--strategy", "fedadam"]))
    assert config.server_lr == STRATEGIES["fedadam"].default_server_lr < 1
    assert config_from_args(parser.parse_args(["train"])).server_lr == 1.0
    chosen = config_from_args(parser.parse_args(["train", "--strategy", "fedyogi", "--server-lr", "0.05"]))
    assert chosen.server_lr == 0.05


def test_the_train_page_lists_the_registry_and_starts_fedadam_from_its_eta():
    """Choosing FedAdam on the Train page sets the server learning rate to its default eta; a round runs with it."""
    page = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    page.switch_page("pages/1_Train.py")
    page.run()
    choice = next(w for w in page.selectbox if w.label == "Strategy")
    assert choice.options == [cls.label for cls in STRATEGIES.values()]
    choice.set_value("fedadam")
    page.run()
    assert next(w for w in page.number_input if w.label == "Server learning rate").value == 0.01
    for label, value in (("Workers", 3), ("Rounds", 1)):
        next(w for w in page.number_input if w.label == label).set_value(value)
    next(w for w in page.button if w.label == "Start").click()
    page.run()
    job = page.session_state[session.JOB]
    try:
        assert (job.config.strategy, job.config.server_lr) == ("fedadam", 0.01)
        job.join(120)
        page.run()
        assert any("Done:" in s.value for s in page.success)
    finally:
        job.stop()
        job.join(60)

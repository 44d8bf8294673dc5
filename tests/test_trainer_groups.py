"""The trainer's fast paths give the reference results: grouped convolutions, memory groups, chunked scoring."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fed_core.config import TrainConfig
from fed_core.data.mnist import normalize
from fed_core.federation.server import Evaluator
from fed_core.federation.stacked import stacked_logits
from fed_core.federation.trainer import (
    BatchedTrainer,
    activation_bytes,
    bytes_per_worker,
    epoch_orders,
    workers_per_group,
)
from fed_core.models import MODELS, new_model
from fed_core.vocabulary import LocalSettings, flatten, model_params, unflatten


def train_alone(model_name: str, settings: LocalSettings, data, shard: torch.Tensor, seed: int) -> torch.Tensor:
    """The reference: one worker, torch's own SGD and clip_grad_norm_, the trainer's batch order."""
    model = new_model(model_name, "default", seed=0)
    start = flatten(model_params(model))
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    for order in epoch_orders(len(shard), settings.epochs, seed):
        for batch in shard[order].split(settings.batch_size):
            opt.zero_grad()
            F.cross_entropy(model(normalize(data.train_images[batch])), data.train_labels[batch]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
            opt.step()
    return flatten(model_params(model)) - start


@pytest.mark.parametrize("model_name", list(MODELS))
def test_stacked_pass_equals_each_worker_trained_alone(tiny_data, model_name):
    """Unequal shards, momentum and clipping that bites: every worker matches its own plain-torch run."""
    settings = LocalSettings(model_name, epochs=2, batch_size=10, lr=0.05, momentum=0.5, clip_norm=0.5)
    model = new_model(model_name, "default", seed=0)
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
    shards = [torch.arange(0, 30), torch.arange(30, 45), torch.arange(45, 70)]
    updates = trainer.train(flatten(model_params(model)), [0, 1, 2], shards, seeds=[4, 5, 6])
    for update, shard, seed in zip(updates, shards, [4, 5, 6]):
        assert torch.allclose(update.delta, train_alone(model_name, settings, tiny_data, shard, seed), atol=2e-5)
    assert [u.local_steps for u in updates] == [6, 4, 6]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_stacked_logits_equal_the_module_on_each_worker(tiny_data, model_name):
    models = [new_model(model_name, "default", seed=s) for s in range(3)]
    x = normalize(tiny_data.train_images[:12]).view(3, 4, 1, 28, 28)
    stacked = {name: torch.stack([model_params(m)[name] for m in models]) for name in model_params(models[0])}
    logits = stacked_logits(models[0], stacked, x)
    for i, m in enumerate(models):
        assert torch.allclose(logits[i], m(x[i]), atol=1e-5)


def test_training_keeps_torch_dynamo_out_of_the_process():
    """torch.func's gradients import torch._dynamo (about 156 MB resident); the trainer's plain autograd does not."""
    script = (
        "import sys, torch\n"
        "from fed_core.config import TrainConfig\n"
        "from fed_core.data.mnist import Mnist\n"
        "from fed_core.engines import engine_for\n"
        "g = torch.Generator().manual_seed(0)\n"
        "images = lambda n: torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)\n"
        "labels = lambda n: torch.arange(n) % 10\n"
        "data = Mnist(images(300), labels(300), images(100), labels(100))\n"
        "for dp in ('none', 'example'):\n"
        "    config = TrainConfig(workers=3, rounds=1, train_size=300, contribution_subset=100, dp=dp)\n"
        "    engine_for(config).run(data)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("model_name", ["crypto_cnn", "fedavg_cnn"])
def test_groups_from_a_small_budget_give_the_same_updates(tiny_data, model_name):
    settings = LocalSettings(model_name, epochs=1, batch_size=10, lr=0.02, momentum=0.9, clip_norm=1.0)
    model = new_model(model_name, "default", seed=1)
    start = flatten(model_params(model))
    shards = [torch.arange(i * 20, (i + 1) * 20 + 5 * i) for i in range(5)]
    one = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
    budget = 2 * bytes_per_worker(model_name, 10)
    split = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings, budget)
    assert (one.group_size, split.group_size) == (workers_per_group(model_name, 10, 2 * 2**30), 2)
    together = one.train(start, list(range(5)), shards, seeds=list(range(5)))
    in_groups = split.train(start, list(range(5)), shards, seeds=list(range(5)))
    assert [u.worker for u in in_groups] == list(range(5))
    for a, b in zip(together, in_groups):
        assert torch.allclose(a.delta, b.delta, atol=1e-6)
        assert a.loss_after == pytest.approx(b.loss_after, abs=1e-5)


def test_memory_per_worker_grows_with_the_batch_and_the_model():
    assert (
        bytes_per_worker("fedavg_cnn", 1024) > bytes_per_worker("fedavg_cnn", 10) > bytes_per_worker("crypto_cnn", 10)
    )
    # 100 workers of the paper's CNN at batch 1024 would need tens of GB at once: groups keep it within 2 GiB.
    assert 100 * bytes_per_worker("fedavg_cnn", 1024) > 30 * 2**30
    assert workers_per_group("fedavg_cnn", 1024, 2 * 2**30) == 2
    assert workers_per_group("fedavg_cnn", 1024, 1) == 1


def test_leave_one_out_scoring_in_chunks_equals_all_at_once(tiny_data):
    model = new_model("crypto_cnn", "default", seed=0)
    config = TrainConfig(contribution_subset=200)
    vectors = flatten(model_params(model)) + 0.05 * torch.randn(7, sum(p.numel() for p in model.parameters()))
    whole = Evaluator(model, tiny_data, config).subset_accuracies(vectors)
    chunked = Evaluator(model, tiny_data, config, memory_budget_bytes=1).subset_accuracies(vectors)
    assert torch.equal(whole, chunked)
    for i in range(7):  # and each is the model's own accuracy
        params = unflatten(vectors[i], model_params(model))
        own = torch.func.functional_call(model, params, (normalize(tiny_data.test_images[:10_000]),))
        subset = Evaluator(model, tiny_data, config).subset
        expected = (own[subset].argmax(1) == tiny_data.test_labels[subset]).float().mean()
        assert whole[i] == pytest.approx(expected.item())


def test_activation_bytes_are_measured_even_under_no_grad():
    activation_bytes.cache_clear()
    with torch.no_grad():
        assert activation_bytes("crypto_cnn") > 0

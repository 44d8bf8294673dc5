import torch
import torch.nn.functional as F

from fed_core.config import TrainConfig
from fed_core.data.mnist import normalize
from fed_core.federation.strategies import fedavg, strategy_for
from fed_core.federation.trainer import BatchedTrainer, epoch_orders
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, flatten, model_params


def test_fedavg_weights_updates_by_examples():
    deltas = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    counts = torch.tensor([100, 300, 600])
    # by hand: 0.1*[1,0] + 0.3*[0,1] + 0.6*[3,3]
    assert torch.allclose(fedavg(deltas, counts), torch.tensor([1.9, 2.1]))


def test_server_sgd_lr_one_is_plain_averaging_and_momentum_accumulates():
    plain = strategy_for(TrainConfig(server_lr=1.0))
    assert torch.allclose(plain.step(torch.ones(3), torch.full((3,), 0.5)), torch.full((3,), 1.5))
    heavy = strategy_for(TrainConfig(server_lr=1.0, server_momentum=0.5))
    x = heavy.step(torch.zeros(2), torch.ones(2))
    x = heavy.step(x, torch.ones(2))  # velocity 0.5*1 + 1 = 1.5
    assert torch.allclose(x, torch.full((2,), 2.5))


def test_one_worker_with_all_data_equals_plain_local_sgd(tiny_data):
    settings = LocalSettings(model="crypto_cnn", epochs=2, batch_size=64, lr=0.02, momentum=0.9, clip_norm=1.0)
    model = new_model("crypto_cnn", "default", seed=3)
    shard = torch.arange(500)
    update = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings).train(
        flatten(model_params(model)), [0], [shard], seeds=[11]
    )[0]

    reference = new_model("crypto_cnn", "default", seed=3)
    opt = torch.optim.SGD(reference.parameters(), lr=0.02, momentum=0.9)
    for order in epoch_orders(len(shard), 2, seed=11):
        for batch in shard[order].split(64):
            opt.zero_grad()
            F.cross_entropy(
                reference(normalize(tiny_data.train_images[batch])), tiny_data.train_labels[batch]
            ).backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            opt.step()
    expected = flatten(model_params(reference)) - flatten(model_params(model))
    assert update.num_examples == 500
    assert torch.allclose(update.delta, expected, atol=1e-5)
    assert update.loss_after < update.loss_before


def test_workers_in_one_batch_train_as_if_alone(tiny_data):
    """Stacking workers must not mix their data: each matches a solo run on its own shard."""
    settings = LocalSettings(model="crypto_cnn", epochs=1, batch_size=32, lr=0.02, momentum=0.9, clip_norm=1.0)
    model = new_model("crypto_cnn", "default", seed=0)
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
    start = flatten(model_params(model))
    shards = [torch.arange(0, 300), torch.arange(300, 400)]  # unequal sizes
    together = trainer.train(start, [0, 1], shards, seeds=[1, 2])
    for update, shard, seed in zip(together, shards, [1, 2]):
        alone = trainer.train(start, [0], [shard], seeds=[seed])[0]
        assert torch.allclose(update.delta, alone.delta, atol=1e-5)

"""Differential privacy: clipping bounds every contribution, the noise is right and secret, epsilon is Opacus's."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp
from opacus.accountants.utils import get_noise_multiplier
from scipy import stats

import fed_core.federation.trainer
from fed_core.data.mnist import normalize
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.privacy.dp import (
    ClientAccountant,
    ClientDP,
    Epsilon,
    ExampleAccountant,
    ExampleDP,
    SecureRandom,
    clip_rows,
    describe_epsilon,
    epsilon_of_history,
    noise_for_epsilon,
    poisson_batches,
    poisson_plan,
    poisson_sample_workers,
    private_fedavg,
)
from fed_core.vocabulary import LocalSettings, flatten, model_params

ONE_STEP = LocalSettings(
    model="crypto_cnn", epochs=1, batch_size=1000, lr=1.0, momentum=0.0, clip_norm=1e9
)  # B >= shard: q = 1


def train_private(data, shards, dp, settings=ONE_STEP, seed=3):
    model = new_model(settings.model, "default", seed)
    if dp is not None:
        settings = replace(settings, dp_clip=dp.clip, dp_noise=dp.noise_multiplier)
    trainer = BatchedTrainer(model, data.train_images, data.train_labels, settings)
    updates = trainer.train(flatten(model_params(model)), list(range(len(shards))), shards, [0] * len(shards))
    return model, torch.stack([u.delta for u in updates])


def clipped_mean_gradient(model, data, shard, clip):
    """By hand: each example's gradient by autograd, clipped to ``clip``, summed, divided by the shard size."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()))
    for i in shard.tolist():
        model.zero_grad()
        F.cross_entropy(model(normalize(data.train_images[i : i + 1])), data.train_labels[i : i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        total += g * min(1.0, clip / (g.norm().item() + 1e-6))
    return total / len(shard)


def test_secure_normal_has_the_requested_standard_deviation():
    draws = SecureRandom().normal((200_001,), 2.5)  # odd length: the last Box-Muller pair is cut
    assert draws.dtype == torch.float32 and draws.shape == (200_001,)
    draws = draws.double()
    # The sample std of n normals is within 5/sqrt(2n) of the truth except with probability < 1e-6.
    assert abs(draws.std().item() / 2.5 - 1) < 5 / math.sqrt(2 * 200_001)
    assert abs(draws.mean().item()) < 5 * 2.5 / math.sqrt(200_001)
    assert stats.kstest(draws.numpy(), stats.norm(scale=2.5).cdf).pvalue > 1e-4


def test_secure_uniform_fills_the_unit_interval():
    u = SecureRandom().uniform(100_000)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-4


def test_noise_is_not_reproducible_from_torch_seed():
    torch.manual_seed(0)
    first = SecureRandom().normal((1000,), 1.0)
    torch.manual_seed(0)
    second = SecureRandom().normal((1000,), 1.0)
    assert not torch.equal(first, second)


def test_private_training_is_not_reproducible_from_the_seeds(tiny_data):
    shards = [torch.arange(20)]
    _, plain_a = train_private(tiny_data, shards, None)
    _, plain_b = train_private(tiny_data, shards, None)
    _, private_a = train_private(tiny_data, shards, ExampleDP(clip=1.0, noise_multiplier=1.0))
    _, private_b = train_private(tiny_data, shards, ExampleDP(clip=1.0, noise_multiplier=1.0))
    assert torch.equal(plain_a, plain_b)  # the same seeds and data: the non-private path is deterministic
    assert not torch.allclose(private_a, private_b)


def test_dp_sgd_without_noise_or_clipping_is_plain_sgd_on_the_same_batch(tiny_data):
    # q = 1 (B >= shard size), so the Poisson batch is the whole shard, as is the plain path's one batch.
    shards = [torch.arange(40), torch.arange(100, 125)]
    _, plain = train_private(tiny_data, shards, None)
    _, private = train_private(tiny_data, shards, ExampleDP(clip=1e9, noise_multiplier=0.0))
    assert plain.abs().max() > 1e-3
    assert torch.allclose(private, plain, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("model_name", ["crypto_cnn", "tanh_cnn"])
def test_dp_sgd_clips_each_example_not_the_batch(tiny_data, model_name):
    shard = torch.arange(30, 36)
    settings = replace(ONE_STEP, model=model_name)
    model, delta = train_private(tiny_data, [shard], ExampleDP(clip=0.05, noise_multiplier=0.0), settings)
    expected = -clipped_mean_gradient(model, tiny_data, shard, 0.05)  # lr 1, one step, no momentum
    assert torch.allclose(delta[0], expected, atol=1e-6, rtol=1e-4)
    # Clipping the batch's mean gradient instead would give a different step (examples' norms differ).
    mean_gradient = clipped_mean_gradient(model, tiny_data, shard, 1e9)
    assert not torch.allclose(delta[0], -mean_gradient * min(1.0, 0.05 / mean_gradient.norm().item()), atol=1e-5)


def test_one_examples_contribution_is_bounded_by_the_clip(tiny_data):
    shards = [torch.tensor([i]) for i in range(8)]  # one example per worker: its step is its clipped gradient
    _, deltas = train_private(tiny_data, shards, ExampleDP(clip=0.01, noise_multiplier=0.0))
    norms = deltas.norm(dim=1)
    assert (norms <= 0.01 * 1.001).all()  # the delta is new minus old float32 weights: rounding of ~1e-5 relative
    assert (norms > 0.0099).all()  # every raw gradient is larger than 0.01, so the clip binds


def test_dp_sgd_noise_has_std_z_s_over_the_expected_batch_and_empty_batches_still_step(tiny_data, monkeypatch):
    # Every Poisson batch comes out empty: each of the worker's steps is pure noise N(0, (zS)^2) / E[batch].
    monkeypatch.setattr(
        fed_core.federation.trainer, "poisson_batches", lambda shards, rates, rng: [s[:0] for s in shards]
    )
    settings = LocalSettings(model="crypto_cnn", epochs=1, batch_size=10, lr=0.5, momentum=0.0, clip_norm=1.0)
    shard = torch.arange(40)  # 4 steps at q = 1/4, expected batch 10
    _, delta = train_private(tiny_data, [shard], ExampleDP(clip=2.0, noise_multiplier=1.5), settings)
    std = 0.5 * 1.5 * 2.0 / 10 * math.sqrt(4)
    assert abs(delta.std().item() / std - 1) < 5 / math.sqrt(2 * delta.numel())


def test_poisson_plan_follows_opacus_rule():
    plan = poisson_plan(shard_size=6000, batch_size=256, epochs=2)
    assert plan.steps == 2 * 24 and plan.sample_rate == 1 / 24
    assert plan.expected_batch == pytest.approx(250)
    assert poisson_plan(shard_size=50, batch_size=256, epochs=3).sample_rate == 1.0


def test_poisson_batches_include_each_example_at_its_rate():
    rng = SecureRandom()
    shards = [torch.arange(1000), torch.arange(1000, 1500), torch.arange(1500, 1600)]
    counts = torch.zeros(1600)
    sizes = []
    for _ in range(400):
        batches = poisson_batches(shards, [0.1, 0.3, 0.0], rng)
        sizes.append([len(b) for b in batches])
        for b in batches:
            counts[b] += 1
    mean_sizes = torch.tensor(sizes, dtype=torch.float64).mean(0)
    assert abs(mean_sizes[0] - 100) < 5 * math.sqrt(1000 * 0.1 * 0.9 / 400)
    assert abs(mean_sizes[1] - 150) < 5 * math.sqrt(500 * 0.3 * 0.7 / 400)
    assert mean_sizes[2] == 0
    assert len(set(tuple(s) for s in sizes)) > 1  # batch sizes vary from step to step
    assert abs(counts[:1000].mean() / 400 - 0.1) < 0.005


def test_poisson_sample_workers_draws_each_worker_at_rate_c():
    rng = SecureRandom()
    rounds = [poisson_sample_workers(1000, 0.1, rng) for _ in range(50)]
    mean = sum(len(r) for r in rounds) / 50
    assert abs(mean - 100) < 5 * math.sqrt(1000 * 0.09 / 50)
    assert len({tuple(r) for r in rounds}) == 50


def test_private_fedavg_clips_each_worker_and_divides_by_the_expected_count():
    deltas = torch.stack([torch.full((4,), 5.0), torch.full((4,), 0.1), torch.tensor([3.0, 0.0, 0.0, 4.0])])
    clipped = clip_rows(deltas, 1.0)
    assert clipped.norm(dim=1).max() <= 1.0 + 1e-6
    aggregate = private_fedavg(clipped.sum(0), ClientDP(clip=1.0, noise_multiplier=0.0), 4.0, SecureRandom())
    by_hand = (torch.full((4,), 0.5) + torch.full((4,), 0.1) + torch.tensor([0.6, 0.0, 0.0, 0.8])) / 4.0
    assert torch.allclose(aggregate, by_hand, atol=1e-6)
    alone = private_fedavg(clip_rows(deltas[:1] * 1e6, 1.0).sum(0), ClientDP(1.0, 0.0), 4.0, SecureRandom())
    assert alone.norm() <= 1.0 / 4.0


def test_private_fedavg_noise_has_std_z_s_over_the_expected_count():
    aggregate = private_fedavg(torch.zeros(100_000), ClientDP(clip=2.0, noise_multiplier=1.5), 4.0, SecureRandom())
    assert abs(aggregate.std().item() / 0.75 - 1) < 5 / math.sqrt(2 * 100_000)


def opacus_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = rdp.get_privacy_spent(
        orders=orders, rdp=rdp.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=orders), delta=delta
    )
    return eps


def opacus_prv_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    accountant = PRVAccountant()
    accountant.history = [(noise, rate, steps)]
    return accountant.get_epsilon(delta)


def test_prv_is_tighter_than_rdp_on_the_issues_history_and_the_tighter_is_the_guarantee():
    """150 steps at q = 1/30, z = 1 (5 epochs of 60k at B = 2000): RDP 3.2111, PRV 2.77."""
    bounds = epsilon_of_history([(1.0, 1 / 30, 150)], 1e-5)
    assert bounds.rdp == pytest.approx(3.2111, abs=1e-4)
    assert bounds.prv == pytest.approx(2.77, abs=0.01)
    assert bounds.value == bounds.prv
    assert "2.77" in describe_epsilon(bounds) and "3.21" in describe_epsilon(bounds)
    assert Epsilon(1.5, None).value == 1.5  # PRV unavailable: RDP alone holds


def test_noise_for_a_target_epsilon_meets_it_with_the_tighter_accountant():
    rate, steps = 1 / 30, 150
    noise = noise_for_epsilon(3.0, rate, steps, 1e-5)
    reached = epsilon_of_history([(noise, rate, steps)], 1e-5)
    assert reached.value <= 3.0 < reached.rdp  # PRV meets the budget with less noise than RDP would need
    rdp_only = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=rate, steps=steps)
    assert noise < rdp_only
    assert epsilon_of_history([(noise * 0.97, rate, steps)], 1e-5).value > 3.0  # and no noise is wasted


def test_example_epsilon_is_opacus_for_the_rounds_a_worker_trained_in():
    accountant = ExampleAccountant(ExampleDP(clip=1.0, noise_multiplier=1.1), batch_size=64, epochs=2, delta=1e-5)
    accountant.record_round({0: 6000, 1: 6000})
    first = accountant.epsilon_of(0)
    accountant.record_round({0: 6000})
    accountant.record_round({0: 6000})
    # 6000 examples, B = 64: 94 steps per epoch at q = 1/94; worker 0 trained 3 rounds of 2 epochs.
    history = (1.1, 1 / 94, 3 * 2 * 94)
    assert accountant.bounds_of(0).rdp == pytest.approx(opacus_epsilon(*history, 1e-5), rel=1e-9)
    assert accountant.bounds_of(0).prv == pytest.approx(opacus_prv_epsilon(*history, 1e-5), rel=1e-9)
    assert accountant.epsilon_of(0) == min(accountant.bounds_of(0).rdp, accountant.bounds_of(0).prv)
    assert accountant.epsilon_of(1) == pytest.approx(first, rel=1e-9) and first < accountant.epsilon_of(0)
    assert accountant.epsilon_of(2) == 0  # never sampled: spent nothing
    assert accountant.epsilon() == accountant.epsilon_of(0)
    assert accountant.bounds() == accountant.bounds_of(0)


def test_many_distinct_histories_share_one_dominating_prv():
    """Six shard sizes, six histories: one PRV at the largest rate and step count bounds every worker's."""
    accountant = ExampleAccountant(ExampleDP(clip=1.0, noise_multiplier=1.0), batch_size=100, epochs=1, delta=1e-5)
    sizes = {w: 1000 + 150 * w for w in range(6)}  # 10 to 18 steps at q = 1/10 to 1/18
    accountant.record_round(sizes)
    bounds = accountant.bounds()
    assert bounds.prv == pytest.approx(opacus_prv_epsilon(1.0, 1 / 10, 18, 1e-5), rel=1e-9)
    assert all(bounds.prv >= accountant.bounds_of(w).prv for w in sizes)
    assert bounds.rdp == max(accountant.bounds_of(w).rdp for w in sizes)


def test_example_epsilon_shrinks_with_more_noise_and_is_infinite_without():
    def after_five_rounds(noise):
        accountant = ExampleAccountant(ExampleDP(1.0, noise), batch_size=128, epochs=1, delta=1e-5)
        for _ in range(5):
            accountant.record_round({0: 6000})
        return accountant.epsilon()

    assert after_five_rounds(0.8) > after_five_rounds(1.2) > after_five_rounds(2.0) > 0
    assert after_five_rounds(0.0) == math.inf


def test_client_epsilon_is_opacus_with_rate_c_and_one_step_per_round():
    accountant = ClientAccountant(ClientDP(clip=1.0, noise_multiplier=1.0), fraction=0.1, delta=1e-5)
    epsilons = []
    for participants in ([1, 2], [], [2, 3]):
        accountant.record_round(participants)
        epsilons.append(accountant.epsilon())
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert accountant.bounds().rdp == pytest.approx(opacus_epsilon(1.0, 0.1, 3, 1e-5), rel=1e-9)
    assert accountant.bounds().prv == pytest.approx(opacus_prv_epsilon(1.0, 0.1, 3, 1e-5), rel=1e-9)
    assert epsilons[2] == accountant.bounds().value
    # Worker 2 took part twice: without secret sampling that is two plain Gaussian mechanisms.
    public = min(opacus_epsilon(1.0, 1.0, 2, 1e-5), opacus_prv_epsilon(1.0, 1.0, 2, 1e-5))
    assert accountant.epsilon_if_sampling_public() == pytest.approx(public, rel=1e-9)
    assert accountant.epsilon_if_sampling_public() > accountant.epsilon()
    louder = ClientAccountant(ClientDP(clip=1.0, noise_multiplier=3.0), fraction=0.1, delta=1e-5)
    for _ in range(3):
        louder.record_round([1])
    assert louder.epsilon() < epsilons[2]


def test_dp_settings_reject_nonsense():
    with pytest.raises(ValueError, match="clip"):
        ExampleDP(clip=0.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise"):
        ClientDP(clip=1.0, noise_multiplier=-1.0)


def test_tanh_cnn_learns_under_dp_sgd(tiny_data):
    """The DP papers' model through the whole private path: Poisson batches, ghost clipping, secure noise."""
    settings = LocalSettings(model="tanh_cnn", epochs=4, batch_size=200, lr=2.0, momentum=0.9, clip_norm=1.0)
    shard = torch.arange(len(tiny_data.train_labels))
    model, delta = train_private(tiny_data, [shard], ExampleDP(clip=0.1, noise_multiplier=1.0), settings)
    torch.nn.utils.vector_to_parameters(flatten(model_params(model)) + delta[0], model.parameters())
    with torch.no_grad():
        accuracy = (model(normalize(tiny_data.test_images)).argmax(1) == tiny_data.test_labels).float().mean()
    assert accuracy > 0.9  # ten templates: chance is 10%

"""Distributed DP: the workers' noise shares in the securely aggregated sum carry the accountant's noise, always."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import fed_core.privacy.policy
from fed_core.config import ConfigError, TrainConfig, validate
from fed_core.data.mnist import normalize
from fed_core.engines import engine_for
from fed_core.federation.aggregation import aggregate
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.privacy.distributed_dp import RING_UNITS, NoiseSplit, discrete_gaussian
from fed_core.privacy.dp import ClientAccountant, ClientDP, ExampleAccountant, ExampleDP, SecureRandom
from fed_core.privacy.ghost_clip import GhostClipper
from fed_core.privacy.secagg import SecAggRefused, secure_sum
from fed_core.vocabulary import flatten, model_params
from ui import session

ROOT = Path(__file__).resolve().parent.parent

LENGTH = 20_000  # coordinates: the sample variance is within 5 * sqrt(2 / LENGTH) = 5% of the truth
TOLERANCE = 5 * math.sqrt(2 / LENGTH)


def test_discrete_gaussian_has_the_discrete_gaussians_probabilities():
    draws = discrete_gaussian(400_000, 1.5, SecureRandom())
    values = np.arange(-9, 10)
    want = np.exp(-(values**2) / (2 * 1.5**2))
    want /= want.sum()
    got = np.array([(draws == v).mean() for v in values])
    assert np.abs(got - want).max() < 5 * math.sqrt(want.max() / 400_000)
    wide = discrete_gaussian(LENGTH, 3e6, SecureRandom())
    assert wide.dtype == np.int64 and abs(wide.var() / 3e6**2 - 1) < TOLERANCE


def noise_of_sum(split: NoiseSplit, workers: int, dropped=(), colluders=()) -> np.ndarray:
    """Secure sum of zero updates: what comes out is the noise, in update units, less the colluders' own shares."""
    shares = []

    def recorded(threshold):
        shares.append(split.sampler()(threshold))
        return shares[-1]

    result = secure_sum(torch.zeros(workers, split.length), [1] * workers, dropped, noise=recorded)
    return result.weighted_sum.numpy() - sum((shares[c] for c in colluders), np.zeros(split.length)) / RING_UNITS


def central_variance(split: NoiseSplit) -> float:
    """What the accountant assumes: noise of std z * S on the sum (here z * Delta, Delta = S plus rounding)."""
    return (split.central_sigma() / RING_UNITS) ** 2


def test_the_sum_carries_the_central_noise_when_exactly_the_threshold_survives():
    split = NoiseSplit(ClientDP(clip=0.5, noise_multiplier=2.0), colluding=0, length=LENGTH)
    assert split.central_sigma() / RING_UNITS == pytest.approx(2.0 * 0.5, rel=1e-4)  # rounding adds 1e-5
    # 6 workers, one group, threshold 4: two may drop after masking and the sum is still released.
    noise = noise_of_sum(split, 6, dropped=[4, 5])
    assert abs(noise.var() / central_variance(split) - 1) < TOLERANCE
    everyone = noise_of_sum(split, 6)  # more survivors only add noise
    assert abs(everyone.var() / central_variance(split) - 6 / 4) < 1.5 * TOLERANCE


def test_a_dropout_cannot_weaken_the_noise_it_either_keeps_it_or_refuses_the_round():
    split = NoiseSplit(ClientDP(clip=1.0, noise_multiplier=1.0), colluding=0, length=LENGTH)
    with pytest.raises(SecAggRefused):
        noise_of_sum(split, 6, dropped=[3, 4, 5])  # 3 survivors < t = 4: no sum at all
    # Control: shares split by the number of workers sampled (variance / 6 each) would leave 4/6 of the
    # noise after the same two dropouts, silently: epsilon would be understated.
    naive = NoiseSplit(ClientDP(clip=1.0, noise_multiplier=1.0), colluding=0, length=LENGTH)
    weak = secure_sum(torch.zeros(6, LENGTH), [1] * 6, [4, 5], noise=lambda t: naive.sampler()(6)).weighted_sum.numpy()
    assert weak.var() < 0.75 * central_variance(naive)
    assert noise_of_sum(split, 6, dropped=[4, 5]).var() > (1 - TOLERANCE) * central_variance(split)


def test_colluders_subtracting_their_shares_still_leave_the_central_noise():
    split = NoiseSplit(ClientDP(clip=1.0, noise_multiplier=1.5), colluding=1, length=LENGTH)
    honest = noise_of_sum(split, 6, dropped=[4, 5], colluders=[0])  # t = 4 survivors, one of them colluding
    assert abs(honest.var() / central_variance(split) - 1) < TOLERANCE
    with pytest.raises(SecAggRefused, match="colluding"):
        NoiseSplit(ClientDP(1.0, 1.0), colluding=4, length=10).share_sigma(4)


def test_a_run_with_the_noise_split_reports_the_client_accountants_epsilon(tiny_data, monkeypatch):
    def server_noise(*_):
        raise AssertionError("with the noise split the server adds no noise of its own")

    monkeypatch.setattr(fed_core.privacy.policy, "private_fedavg", server_noise)
    config = TrainConfig(
        workers=6,
        rounds=2,
        train_size=1200,
        contribution_subset=0,
        shapley=False,
        secure_aggregation=True,
        dp="client",
        dp_clip=0.05,
        dp_noise=0.8,
        dp_distributed=True,
        dropout=0.2,
    )
    run = engine_for(config).run(tiny_data)
    accountant = ClientAccountant(ClientDP(0.05, 0.8), 1.0, config.dp_delta)
    for record in run.history:
        accountant.record_round(record.sampled)
        assert record.epsilon == pytest.approx(accountant.epsilon(), rel=1e-9)
    assert all(math.isfinite(r.test_accuracy) for r in run.history)


def test_a_fedsgd_round_is_one_central_dp_sgd_step_on_the_pooled_data(tiny_data):
    """Without noise and with q = 1, so that the batches are known: the round's step is the central clipped step."""
    config = TrainConfig(
        dp="example", dp_clip=0.2, dp_noise=0.0, batch_size=1000, lr=0.5, secure_aggregation=True, dp_distributed=True
    )
    model = new_model("crypto_cnn", "default", 0)
    shards = [torch.arange(0, 40), torch.arange(40, 70), torch.arange(70, 120)]
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, config.local)
    vector = flatten(model_params(model))
    updates = trainer.train(vector, [0, 1, 2], shards, [0, 0, 0])
    step = aggregate(updates, [], config).average
    params = {name: p.detach() for name, p in model.named_parameters()}
    pooled = torch.cat(shards)
    x, y = normalize(tiny_data.train_images[pooled]), tiny_data.train_labels[pooled]
    clipped, norms = GhostClipper(model).clipped_sum(params, x, y, 0.2)
    assert (norms > 0.2).any()
    torch.testing.assert_close(step, -0.5 * flatten(clipped) / len(pooled), rtol=1e-4, atol=1e-6)


def test_a_fedsgd_run_accounts_one_step_per_round_and_no_worker_adds_noise_of_its_own(tiny_data, monkeypatch):
    def own_noise(*_):
        raise AssertionError("under the noise split a worker's only noise is its share in the ring")

    monkeypatch.setattr(SecureRandom, "normal", own_noise)
    config = TrainConfig(
        workers=4,
        rounds=3,
        train_size=1200,
        contribution_subset=0,
        shapley=False,
        batch_size=100,
        lr=0.5,
        secure_aggregation=True,
        dp="example",
        dp_noise=1.0,
        dp_distributed=True,
    )
    run = engine_for(config).run(tiny_data)
    accountant = ExampleAccountant(ExampleDP(1.0, 1.0), 100, 1, config.dp_delta, steps_per_round=1)
    for record in run.history:
        accountant.record_round({w: 300 for w in record.sampled})
        assert record.epsilon == pytest.approx(accountant.epsilon(), rel=1e-9)
    assert accountant.histories[0] == [(1.0, 1 / 3, 3)]  # 300 images, B = 100: q = 1/3, one step a round
    assert run.history[-1].test_accuracy > 0.3  # it learns


def test_the_noise_split_needs_dp_secure_aggregation_and_the_inprocess_engine():
    with pytest.raises(ConfigError, match="distributed DP"):
        validate(TrainConfig(dp="client", dp_distributed=True))
    with pytest.raises(ConfigError, match="distributed DP"):
        validate(TrainConfig(dp="none", secure_aggregation=True, dp_distributed=True))
    with pytest.raises(ConfigError, match="inprocess engine only"):
        validate(TrainConfig(dp="example", secure_aggregation=True, dp_distributed=True, engine="flower"))
    with pytest.raises(ConfigError, match="dp colluding"):
        validate(TrainConfig(dp="client", secure_aggregation=True, dp_distributed=True, dp_colluding=-1))
    validate(TrainConfig(dp="client", secure_aggregation=True, dp_distributed=True, dp_colluding=2))


def test_the_train_page_offers_the_noise_split_and_states_its_assumption():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py")
    at.run()
    next(r for r in at.radio if r.label == "Privacy").set_value("split").run()
    assert any("1/(t − c) of the variance" in m.value and "FedSGD" in m.value for m in at.markdown)
    next(r for r in at.radio if r.label == "Protect").set_value("client").run()
    assert any("1/(t − c) of the variance" in m.value and "DP-FedAvg" in m.value for m in at.markdown)
    next(n for n in at.number_input if n.label == "Colluding workers c the noise withstands").set_value(1)
    next(n for n in at.number_input if n.label == "Workers").set_value(4)
    next(n for n in at.number_input if n.label == "Rounds").set_value(1)
    next(b for b in at.button if b.label == "Start").click().run()
    job = at.session_state[session.JOB]
    try:
        config = job.config
        assert (config.secure_aggregation, config.dp, config.dp_distributed, config.dp_colluding) == (
            True,
            "client",
            True,
            1,
        )
        job.join(300)
        at.run()
        assert not at.exception
        line = next(m.value for m in at.markdown if "Privacy spent so far" in m.value)
        assert "PRV" in line and "RDP" in line and "at most 1 worker(s) collude" in line
    finally:
        job.stop()
        job.join(60)


def test_the_cli_runs_the_noise_split():
    args = "train --workers 4 --rounds 1 --train-size 1000 --contribution-subset 0 --no-shapley --secure-agg"
    args += " --dp client --clip 0.05 --dp-distributed --dp-colluding 1"
    done = subprocess.run(
        [sys.executable, "-m", "fed_core", *args.split()], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "client-level DP for one worker's data: ε = " in done.stdout
    assert "with up to 1 worker(s) colluding" in done.stdout

"""Privacy inside the round: what the server learns, and what it costs the model."""

import math

import pytest
import torch

from fed_core.config import TrainConfig
from fed_core.dp import ExampleAccountant, ExampleDP
from fed_core.engines import engine_for
from fed_core.server import sample_workers

SMALL = dict(workers=3, rounds=3, train_size=6000, contribution_subset=300, batch_size=64, seed=2)


def test_secure_aggregation_trains_the_same_model_as_plain_fedavg(mnist):
    plain = engine_for(TrainConfig(**SMALL)).run(mnist)
    secure = engine_for(TrainConfig(secure_aggregation=True, **SMALL)).run(mnist)
    for p, s in zip(plain.history, secure.history):
        assert s.test_accuracy == pytest.approx(p.test_accuracy, abs=0.002)
    assert secure.history[-1].test_accuracy > 0.9
    assert secure.history[0].upload_bytes > 1.8 * plain.history[0].upload_bytes  # 64-bit masked ring vs float32


def test_under_secure_aggregation_the_server_knows_no_single_update(tiny_data):
    run = engine_for(TrainConfig(secure_aggregation=True, **{**SMALL, "train_size": 1500})).run(tiny_data)
    for row in run.history[-1].workers:
        for hidden in ("examples", "weight", "update_norm", "cosine_to_aggregate", "contribution"):
            assert math.isnan(row[hidden]), hidden
        assert row["loss_after"] < row["loss_before"]  # what the worker reports of itself
    view = run.server_view
    received, update = view.received, view.update
    assert torch.corrcoef(torch.stack([received, update]))[0, 1].abs() < 0.05
    assert received.abs().mean() > 1e3 * update.abs().mean()  # uniform ring elements, decoded


def test_too_few_survivors_refuse_the_round_and_keep_the_model(tiny_data):
    config = TrainConfig(secure_aggregation=True, dropout=0.4, **{**SMALL, "rounds": 5, "seed": 4, "train_size": 1500})
    dropped = {r: len(sample_workers(config, r)[1]) for r in range(1, 6)}
    refused_rounds = [r for r, n in dropped.items() if n == 2]  # one survivor, below the threshold of 2
    assert refused_rounds, "this seed should leave a round with a single survivor"
    run = engine_for(config).run(tiny_data)
    for r in refused_rounds:
        record = run.history[r - 1]
        assert "threshold" in record.note
        assert record.workers == []
        if r > 1:
            assert record.test_accuracy == run.history[r - 2].test_accuracy
    recovered = [rec for rec in run.history if dropped[rec.round] == 1]
    assert recovered, "this seed should also lose one worker after masking in some round"
    assert all(rec.note is None and len(rec.workers) == 3 - len(rec.dropped) for rec in recovered)


def test_example_level_dp_reports_the_accountants_epsilon_after_every_round(tiny_data):
    config = TrainConfig(dp="example", dp_clip=1.0, dp_noise=1.1, **{**SMALL, "train_size": 1500, "rounds": 2})
    run = engine_for(config).run(tiny_data)
    by_hand = ExampleAccountant(ExampleDP(1.0, 1.1), config.batch_size, config.local_epochs, config.dp_delta)
    epsilons = []
    for record in run.history:
        by_hand.record_round({w: 500 for w in record.sampled})  # 1500 images, 3 IID workers
        epsilons.append(by_hand.epsilon())
        assert all(math.isnan(row["loss_after"]) for row in record.workers)  # a private shard's loss would leak
    assert [r.epsilon for r in run.history] == pytest.approx(epsilons, rel=1e-9)
    assert 0 < run.history[0].epsilon < run.history[1].epsilon


def test_client_level_dp_clips_every_update_and_samples_secretly(tiny_data):
    config = TrainConfig(dp="client", dp_clip=0.05, dp_noise=0.5, fraction=0.5, **{**SMALL, "workers": 6, "rounds": 4})
    run = engine_for(config).run(tiny_data)
    norms = [row["update_norm"] for record in run.history for row in record.workers]
    assert norms and max(norms) <= 0.05 + 1e-6
    assert all(
        row["weight"] == pytest.approx(1 / len(record.workers)) for record in run.history for row in record.workers
    )
    epsilons = [r.epsilon for r in run.history]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    again = engine_for(config).run(tiny_data)
    assert [r.sampled for r in run.history] != [r.sampled for r in again.history], "Poisson draws from a CSPRNG"

"""Privacy inside the round: what the server learns, what the run publishes, and what it costs the model."""

import json
import math

import pytest
import torch

from fed_core.cli import main
from fed_core.cli.train import save_results
from fed_core.config import ConfigError, TrainConfig, validate
from fed_core.engines import engine_for
from fed_core.federation.aggregation import LOCAL_STATS, aggregate
from fed_core.federation.server import sample_workers
from fed_core.privacy.dp import ExampleAccountant, ExampleDP
from fed_core.vocabulary import WorkerUpdate

SMALL = dict(workers=3, rounds=3, train_size=6000, contribution_subset=300, batch_size=64, seed=2)


def test_secure_aggregation_trains_the_same_model_as_plain_fedavg(mnist):
    plain = engine_for(TrainConfig(**SMALL)).run(mnist)
    secure = engine_for(TrainConfig(secure_aggregation=True, **SMALL)).run(mnist)
    for p, s in zip(plain.history, secure.history):
        assert s.test_accuracy == pytest.approx(p.test_accuracy, abs=0.002)
    assert secure.history[-1].test_accuracy > 0.9
    assert secure.history[0].upload_bytes > 1.8 * plain.history[0].upload_bytes  # 64-bit masked ring vs float32


def test_under_secure_aggregation_the_server_knows_no_single_update_nor_its_local_figures(tiny_data):
    config = TrainConfig(secure_aggregation=True, **{**SMALL, "train_size": 1500})
    run = engine_for(config).run(tiny_data)
    for row in run.history[-1].workers:
        for hidden in ("examples", "weight", "update_norm", "cosine_to_aggregate", "contribution", *LOCAL_STATS):
            assert math.isnan(row[hidden]), hidden
    view = run.server_view
    received, update = view.received, view.update
    assert torch.corrcoef(torch.stack([received, update]))[0, 1].abs() < 0.05
    assert received.abs().mean() > 1e3 * update.abs().mean()  # uniform ring elements, decoded
    # What the server does learn of the workers' own training: means over the round, summed through the masks.
    plain = engine_for(TrainConfig(**{**SMALL, "train_size": 1500})).run(tiny_data)
    secure_means, plain_means = run.history[0].local_means, plain.history[0].local_means
    assert secure_means["loss_after"] < secure_means["loss_before"]
    assert secure_means == pytest.approx(plain_means, abs=1e-5)  # the same first round; fixed point of 2^-24
    assert plain_means["loss_before"] == pytest.approx(
        sum(r["loss_before"] * r["examples"] for r in plain.history[0].workers)
        / sum(r["examples"] for r in plain.history[0].workers),
        rel=1e-5,
    )


def worker_update(worker: int, num_examples: int, loss: float) -> WorkerUpdate:
    delta = torch.full((50,), 0.01 * (worker + 1))
    return WorkerUpdate(worker, num_examples, delta, loss, loss / 2, 0.5 + worker / 10)


def test_secure_aggregation_sends_local_statistics_only_inside_the_masked_sum():
    updates = [worker_update(w, n, loss) for w, (n, loss) in enumerate([(100, 2.0), (300, 1.0), (600, 3.0)])]
    combined = aggregate(updates, [], TrainConfig(secure_aggregation=True))
    assert all(math.isnan(report[stat]) for report in combined.reports for stat in LOCAL_STATS)
    assert combined.local_means == pytest.approx(
        {"loss_before": 2.3, "loss_after": 1.15, "local_accuracy": 0.65}, abs=1e-6
    )
    assert len(combined.average) == len(combined.received) == 50  # the statistics are not part of the update
    for dp in ("example", "client"):  # under DP not even the means: they carry no noise
        assert aggregate(updates, [], TrainConfig(secure_aggregation=True, dp=dp)).local_means is None


@pytest.mark.parametrize("workers", [1, 2])
def test_secure_aggregation_of_one_or_two_workers_is_refused_before_the_run(workers):
    with pytest.raises(ConfigError, match="at least 3 workers in every round"):
        validate(TrainConfig(workers=workers, secure_aggregation=True))
    with pytest.raises(ConfigError, match="at least 3 workers in every round"):
        validate(TrainConfig(workers=10, fraction=workers / 10, secure_aggregation=True))


@pytest.mark.parametrize("engine", ["inprocess", "flower"])
def test_the_cli_refuses_secure_aggregation_of_one_or_two_workers(capsys, engine):
    for workers in ("1", "2"):
        code = main(["train", "--workers", workers, "--secure-agg", "--engine", engine])
        err = capsys.readouterr().err
        assert code == 2 and "secure aggregation needs at least 3 workers in every round" in err
        assert "Traceback" not in err


def test_the_cli_says_what_a_client_level_dp_run_publishes(capsys, tmp_path, monkeypatch, tiny_data):
    monkeypatch.setattr("fed_core.cli.train.load_mnist", lambda: tiny_data)
    out = tmp_path / "run.json"
    args = "--workers 6 --fraction 0.5 --rounds 1 --dp client --secure-agg --contribution-subset 0 --train-size 1500"
    assert main(["train", *args.split(), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "client-level DP for one worker's data: ε = " in printed and "names no participant" in printed
    run = json.loads(out.read_text())
    assert "label_histogram" not in run and run["rounds"][0]["sampled"] == run["rounds"][0]["workers"] == []


def test_a_round_with_fewer_than_three_survivors_is_refused_and_keeps_the_model(tiny_data):
    config = TrainConfig(
        secure_aggregation=True, dropout=0.3, **{**SMALL, "workers": 4, "seed": 15, "train_size": 1500}
    )
    assert [len(sample_workers(config, r)[1]) for r in (1, 2, 3)] == [0, 1, 2]
    run = engine_for(config).run(tiny_data)
    recovered, refused = run.history[1], run.history[2]
    assert recovered.note is None and len(recovered.workers) == 3  # one lost after masking: 3 left, recovered
    assert "at least 3 reporting workers and this round has 2 left of 4" in refused.note
    assert refused.workers == [] and refused.local_means is None
    assert refused.test_accuracy == recovered.test_accuracy  # the model stays as it was


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


def test_client_level_dp_clips_every_update_and_weighs_workers_the_same():
    updates = [worker_update(w, n, 1.0) for w, n in enumerate([100, 300, 600])]
    combined = aggregate(updates, [], TrainConfig(dp="client", dp_clip=0.05, dp_noise=0.5))
    assert combined.visible.norm(dim=1).max() <= 0.05 + 1e-6
    assert combined.counts.tolist() == [1, 1, 1]


def test_client_level_dp_samples_secretly():
    config = TrainConfig(dp="client", fraction=0.5, workers=20)
    draws = [sample_workers(config, 1)[0] for _ in range(5)]
    assert len({tuple(d) for d in draws}) > 1, "Poisson draws from a CSPRNG, not from the seed"


@pytest.mark.parametrize("secure", [False, True])
def test_client_level_dp_publishes_nothing_per_worker(tiny_data, tmp_path, secure):
    """Its epsilon holds only while nobody outside the server knows who took part: the run record says nothing of it."""
    settings = {**SMALL, "workers": 6, "rounds": 3, "dropout": 0.2}
    config = TrainConfig(dp="client", dp_clip=0.05, dp_noise=0.5, fraction=0.5, secure_aggregation=secure, **settings)
    run = engine_for(config).run(tiny_data)
    epsilons = [r.epsilon for r in run.history]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0  # the accountant still counts every round
    for record in run.history:
        assert (record.sampled, record.dropped, record.workers, record.note) == ([], [], [], None)
        assert record.local_means is None and math.isnan(record.upload_bytes)
    assert run.server_view is None and run.label_histogram == []
    published = run.to_dict()
    for per_worker in ("label_histogram", "cumulative_contributions", "cumulative_shapley"):
        assert per_worker not in published
    # The CLI's JSON is the same record: no worker id appears as a participant anywhere in it.
    out = tmp_path / "run.json"
    save_results(run, out, None, "done")
    rounds = json.loads(out.read_text())["rounds"]
    assert all(r["sampled"] == r["dropped"] == r["workers"] == [] for r in rounds)

"""The run's privacy is one object built from the settings (fed_core/privacy/policy.py), and nothing else branches
on the DP mode: each kind answers sampling, local training, aggregation, accounting, publishing and its own
description as the branches it replaced did."""

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fed_core.config import TrainConfig, problems
from fed_core.privacy.dp import ClientAccountant, Epsilon, ExampleAccountant, SecureRandom, clip_rows
from fed_core.privacy.policy import (
    DP_SGD_SLOWDOWN,
    ClientLevelDP,
    ExampleLevelDP,
    LocalDP,
    Privacy,
    privacy_for,
    privacy_problems,
)

ROOT = Path(__file__).resolve().parent.parent
MODE_FIELDS = {"dp", "dp_distributed", "dp_colluding", "secure_aggregation"}  # the privacy choice in TrainConfig


def branches_on_the_mode(path: Path) -> list[str]:
    """Lines of ``path`` that compare a ``.dp`` to anything, or read a privacy-choice field off a run's settings
    (``config``, ``job.config``, ``self.config``, or ``self`` inside the settings module), as "path:line: code"."""
    lines = path.read_text().splitlines()
    found = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Compare):
            if any(isinstance(o, ast.Attribute) and o.attr == "dp" for o in [node.left, *node.comparators]):
                found.add(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in MODE_FIELDS and isinstance(node.ctx, ast.Load):
            base = ast.unparse(node.value)
            if base == "config" or base.endswith(".config") or (base == "self" and path.name == "config.py"):
                found.add(node.lineno)
    return [f"{path}:{line}: {lines[line - 1].strip()}" for line in sorted(found)]


def test_nothing_outside_privacy_branches_on_the_dp_mode():
    privacy = ROOT / "fed_core" / "privacy"
    files = [p for top in ("fed_core", "ui", "pages") for p in (ROOT / top).rglob("*.py") if privacy not in p.parents]
    found = [place for path in files for place in branches_on_the_mode(path)]
    assert not found, "ask privacy_for(config) instead:\n" + "\n".join(found)


def test_the_check_finds_a_branch_on_the_mode(tmp_path):
    """The control: the old forms are caught, and a question to the privacy object is not."""
    module = tmp_path / "config.py"
    module.write_text(
        "def f(config, job, privacy):\n"
        "    a = config.dp == 'client'\n"
        "    b = job.config.secure_aggregation or privacy.secure_aggregation\n"
        "    c = self.dp != 'none'\n"
        "    return a, b, c, config.dp_distributed\n"
    )
    assert [place.split(":")[1] for place in branches_on_the_mode(module)] == ["2", "3", "4", "5"]


SECURE = TrainConfig(secure_aggregation=True)
EXAMPLE = TrainConfig(dp="example", dp_clip=0.5, dp_noise=1.2)
CLIENT = TrainConfig(dp="client", dp_clip=0.05, dp_noise=0.5, workers=20, fraction=0.25)
SPLIT_EXAMPLE = replace(EXAMPLE, secure_aggregation=True, dp_distributed=True, dp_colluding=1)
SPLIT_CLIENT = replace(CLIENT, secure_aggregation=True, dp_distributed=True, dp_colluding=2)


@pytest.mark.parametrize(
    "config, kind, secure, split",
    [
        (TrainConfig(), Privacy, False, False),
        (SECURE, Privacy, True, False),
        (EXAMPLE, ExampleLevelDP, False, False),
        (CLIENT, ClientLevelDP, False, False),
        (replace(CLIENT, secure_aggregation=True), ClientLevelDP, True, False),
        (SPLIT_EXAMPLE, ExampleLevelDP, True, True),
        (SPLIT_CLIENT, ClientLevelDP, True, True),
    ],
)
def test_each_combination_is_one_object(config, kind, secure, split):
    privacy = privacy_for(config)
    assert type(privacy) is kind and privacy.secure_aggregation is secure
    assert getattr(privacy, "noise_split", False) is split
    assert privacy.releases_local_stats is (kind is Privacy)
    assert privacy.publishes_workers is (kind is not ClientLevelDP)  # client-level DP's epsilon needs secret sampling


def test_an_unknown_mode_is_no_privacy_and_left_to_the_settings_check():
    with pytest.raises(ValueError, match="dp must be one of"):
        privacy_for(TrainConfig(dp="central"))
    assert privacy_problems(TrainConfig(dp="central")) == []
    assert any("dp must be one of" in p for p in problems(TrainConfig(dp="central", strategy="scaffold")))


def test_local_training_does_dp_sgd_only_under_example_level_dp():
    assert privacy_for(TrainConfig()).local_dp == LocalDP()
    assert privacy_for(CLIENT).local_dp == LocalDP()
    assert privacy_for(EXAMPLE).local_dp == LocalDP(0.5, 1.2, False)
    assert privacy_for(SPLIT_EXAMPLE).local_dp == LocalDP(0.5, 1.2, True)
    local = SPLIT_EXAMPLE.local
    assert (local.dp_clip, local.dp_noise, local.dp_noise_split) == (0.5, 1.2, True)
    assert (CLIENT.local.dp_clip, CLIENT.local.dp_noise, CLIENT.local.dp_noise_split) == (0.0, 0.0, False)


def test_sampling_draws_a_fixed_count_from_the_seed_or_secretly_by_poisson():
    fixed = privacy_for(TrainConfig(workers=10, fraction=0.3))
    rng, same = np.random.default_rng([0, 1, 1]), np.random.default_rng([0, 1, 1])
    assert fixed.sample(rng) == sorted(same.choice(10, size=3, replace=False).tolist())
    secret = privacy_for(replace(CLIENT, workers=1000, fraction=0.1))
    rng = np.random.default_rng(5)
    draws = [secret.sample(rng) for _ in range(3)]
    assert rng.random() == np.random.default_rng(5).random()  # the seeded generator, known to the server, unused
    assert all(60 < len(d) < 140 for d in draws) and draws[0] != draws[1]
    assert (fixed.expected_sampled(), secret.expected_sampled()) == (3, 100.0)


def test_updates_are_bounded_as_each_kind_requires():
    deltas, counts = torch.tensor([[3.0, 4.0], [0.03, 0.04]]), torch.tensor([10, 30])
    for config in (TrainConfig(), SECURE, EXAMPLE):
        bounded, weights = privacy_for(config).bound(deltas, counts)
        assert torch.equal(bounded, deltas) and torch.equal(weights, counts)
    bounded, weights = privacy_for(CLIENT).bound(deltas, counts)
    assert torch.equal(bounded, clip_rows(deltas, 0.05)) and weights.tolist() == [1, 1]
    bounded, weights = privacy_for(SPLIT_EXAMPLE).bound(deltas, counts)  # FedSGD: clipped sums, unweighted
    assert torch.equal(bounded, deltas) and weights.tolist() == [1, 1]


def test_the_release_is_fedavg_dp_fedavg_or_a_central_dp_sgd_step(monkeypatch):
    average, total = torch.tensor([0.2, -0.4]), torch.tensor(4)
    for config in (TrainConfig(), SECURE, EXAMPLE):
        assert privacy_for(config).release(average, total, [300] * 4) is average
    monkeypatch.setattr(SecureRandom, "normal", lambda self, shape, std: torch.full(shape, std))
    expected = 0.25 * 20  # C * workers
    noised = privacy_for(CLIENT).release(average, total, [300] * 4)
    assert torch.allclose(noised, (average * 4 + 0.5 * 0.05) / expected)  # noise z * S on the clipped sum
    split = privacy_for(SPLIT_CLIENT).release(average, total, [300] * 4)
    assert torch.allclose(split, average * 4 / expected)  # the workers' shares are the noise: the server adds none
    step = privacy_for(replace(SPLIT_EXAMPLE, batch_size=100, lr=0.5)).release(average, total, [300] * 4)
    assert torch.allclose(step, average * 4 * (-0.5 / (4 * 100)))  # E[batch] = sum of q n = 4 * (1/3 * 300)


def test_noise_shares_only_under_the_split():
    assert privacy_for(replace(CLIENT, secure_aggregation=True)).noise_shares(10) is None
    share = privacy_for(SPLIT_CLIENT).noise_shares(10)
    assert share(5).shape == (10,) and share(5).dtype == np.int64


def test_each_kind_has_its_accountant():
    assert privacy_for(TrainConfig()).accountant() is None and privacy_for(SECURE).accountant() is None
    example = privacy_for(EXAMPLE).accountant()
    assert isinstance(example, ExampleAccountant) and example.steps_per_round is None
    assert (example.dp.clip, example.dp.noise_multiplier, example.batch_size, example.epochs) == (0.5, 1.2, 128, 1)
    assert privacy_for(SPLIT_EXAMPLE).accountant().steps_per_round == 1  # FedSGD: one step per round
    client = privacy_for(CLIENT).accountant()
    assert isinstance(client, ClientAccountant) and (client.fraction, client.delta) == (0.25, 1e-5)


def test_labels_and_epsilon_texts_are_the_pages_and_the_clis():
    assert privacy_for(TrainConfig()).label == "none"
    assert privacy_for(SECURE).label == "secure aggregation"
    assert privacy_for(EXAMPLE).label == "example-level DP (S=0.5, z=1.2)"
    assert privacy_for(SPLIT_CLIENT).label == (
        "secure aggregation + client-level DP (S=0.05, z=0.5) + noise split across workers (c=2)"
    )
    bounds = Epsilon(2.0, 1.5)
    assert privacy_for(SECURE).epsilon_sentence(bounds) is None and privacy_for(SECURE).epsilon_lines(bounds) == []
    assert privacy_for(EXAMPLE).epsilon_sentence(bounds).endswith("at δ = 1e-05, for one training image of any worker.")
    lines = privacy_for(SPLIT_CLIENT).epsilon_lines(bounds)
    assert lines[0].startswith("client-level DP for one worker's data: ε = 1.50") and "up to 2 worker(s)" in lines[1]


def test_the_time_estimate_counts_dp_sgd_and_fedsgd():
    assert privacy_for(TrainConfig()).local_training_cost(5, 60_000) == 1.0
    assert privacy_for(EXAMPLE).local_training_cost(5, 60_000) == DP_SGD_SLOWDOWN
    fedsgd = privacy_for(replace(SPLIT_EXAMPLE, local_epochs=2)).local_training_cost(5, 60_000)
    assert fedsgd == pytest.approx(DP_SGD_SLOWDOWN * 128 * 5 / 60_000 / 2)


@pytest.mark.parametrize(
    "config, message",
    [
        (replace(CLIENT, secure_aggregation=True, engine="flower"), "client-level DP with secure aggregation runs"),
        (replace(EXAMPLE, dp_distributed=True), "needs DP and secure aggregation"),
        (TrainConfig(secure_aggregation=True, dp_distributed=True), "needs DP and secure aggregation"),
        (replace(SPLIT_EXAMPLE, engine="flower"), "distributed DP) runs on the inprocess engine only"),
        (TrainConfig(secure_aggregation=True, engine="syft"), "secure aggregation runs on these engines only"),
        (TrainConfig(secure_aggregation=True, workers=4, fraction=0.5), "give 2 per round;"),
        (replace(CLIENT, secure_aggregation=True, workers=10, fraction=0.2), "give 2 per round on average"),
    ],
)
def test_privacy_problems_are_those_the_settings_report(config, message):
    found = privacy_problems(config)
    assert any(message in p for p in found), found
    assert set(found) <= set(problems(config))


def test_settings_that_fit_have_no_privacy_problem():
    for config in (TrainConfig(), SECURE, EXAMPLE, CLIENT, SPLIT_EXAMPLE, SPLIT_CLIENT):
        assert privacy_problems(config) == []

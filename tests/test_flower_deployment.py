"""Flower's Deployment Engine on loopback: a SuperLink and two SuperNodes as subprocesses run a 2-round job."""

import psutil
import pytest

from fed_core.config import TrainConfig
from scripts.flower_deployment import LocalFederation, write_shards

# Every setting away from its default, so a field the deployment dropped would show.
CONFIG = TrainConfig(
    workers=2,
    rounds=2,
    train_size=4000,
    contribution_subset=200,
    engine="flower",
    lr=0.03,
    batch_size=64,
    momentum=0.8,
    clip_norm=2.0,
    server_lr=0.9,
    server_momentum=0.1,
    alpha=0.7,
    shards_per_worker=3,
    init="xavier",
    dropout=0.05,
    seed=1,
)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def federation(tmp_path):
    with LocalFederation(write_shards(CONFIG, tmp_path / "shards"), tmp_path) as federation:
        yield federation
        started = [process.pid for process in federation.family()]
    assert len(started) > 3 and not any(running(pid) for pid in started), "every process is stopped"


def test_superlink_and_two_supernodes_run_a_job_that_learns(federation, tmp_path):
    assert len(federation.processes) == 3  # one SuperLink, two SuperNodes

    run = federation.run(CONFIG, tmp_path / "result", timeout=300)

    accuracies = [r["test_accuracy"] for r in run["rounds"]]
    assert len(accuracies) == 2 and accuracies[1] > accuracies[0] > 0.5
    assert [[w["worker"] for w in r["workers"]] for r in run["rounds"]] == [[0, 1], [0, 1]]
    assert (tmp_path / "result" / "model.pt").stat().st_size > 0
    for name, asked in CONFIG.to_dict().items():
        assert run["config"][name] == asked, f"the deployed run trained with another {name}"

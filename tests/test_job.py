import threading

import pytest

from fed_core.config import ConfigError, TrainConfig
from fed_core.engines import engine_for
from fed_core.job import DONE, FAILED, STOPPED, JobSlots, TrainingJob

SMALL = TrainConfig(workers=3, rounds=3, train_size=1500, contribution_subset=100, batch_size=32)


def test_job_runs_in_background_and_snapshots_rounds(tiny_data):
    job = TrainingJob(engine_for(SMALL), load_data=lambda: tiny_data).start()
    job.join(60)
    snap = job.snapshot()
    assert snap.status == DONE and snap.round == 3 and snap.finished
    assert [r["round"] for r in snap.history] == [1, 2, 3]
    assert len(snap.label_histogram) == 3
    assert set(snap.cumulative_contributions) == {0, 1, 2}
    assert job.model is not None and snap.eta is None


def test_stop_ends_the_run_between_batches(tiny_data):
    release = threading.Event()

    def slow_data():
        release.wait(10)
        return tiny_data

    job = TrainingJob(engine_for(TrainConfig(**{**SMALL.to_dict(), "rounds": 200})), load_data=slow_data).start()
    job.stop()
    release.set()
    job.join(60)
    assert job.snapshot().status == STOPPED
    assert job.snapshot().round == 0


def test_errors_are_reported_not_swallowed(tiny_data):
    diverging = TrainConfig(**{**SMALL.to_dict(), "lr": 10.0, "clip_norm": 1e9})
    job = TrainingJob(engine_for(diverging), load_data=lambda: tiny_data).start()
    job.join(60)
    snap = job.snapshot()
    assert snap.status == FAILED
    assert "diverged" in snap.error


def test_bad_settings_are_refused_before_a_thread_starts():
    with pytest.raises(ConfigError, match="workers must be between 1 and 100"):
        TrainingJob(engine_for(TrainConfig(workers=0)))


def test_slots_cap_concurrent_jobs_and_estimate_the_wait(tiny_data):
    gate = threading.Event()

    def gated():
        gate.wait(30)
        return tiny_data

    slots = JobSlots(capacity=1)
    first = TrainingJob(engine_for(SMALL), load_data=gated)
    assert slots.try_start(first)
    second = TrainingJob(engine_for(SMALL), load_data=lambda: tiny_data)
    assert not slots.try_start(second)
    assert slots.wait_estimate() > 0
    assert slots.find(first.job_id) is first
    gate.set()
    first.join(60)
    assert slots.try_start(second)
    second.join(60)
    assert second.snapshot().status == DONE

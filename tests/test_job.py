import secrets
import threading
import time

import pytest
import torch

from fed_core.config import ConfigError, TrainConfig
from fed_core.engines import engine_for
from fed_core.engines.inprocess import InProcessPool
from fed_core.federation.server import run_federated
from fed_core.job import BUSY, DONE, FAILED, OWNER_BUSY, STOPPED, JobSlots, TrainingJob
from fed_core.limits.budget import load_budget
from fed_core.vocabulary import TrainingDiverged, flatten, model_params

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
    assert job.model is None  # no round finished: nothing to keep


class FailsInRound3(InProcessPool):
    def train(self, global_vector, workers, round_idx):
        if round_idx == 3:
            raise TrainingDiverged("Training diverged on worker(s) [1]")
        return super().train(global_vector, workers, round_idx)


class FailingEngine:
    config = SMALL

    def run(self, data, on_start=None, on_round=None, should_stop=None):
        return run_federated(self.config, data, FailsInRound3, on_start, on_round, should_stop)


def test_a_failed_run_keeps_the_model_of_its_last_good_round(tiny_data):
    """Rounds 1 and 2 finish, round 3 fails inside local training: the run keeps round 2's model."""
    job = TrainingJob(FailingEngine(), load_data=lambda: tiny_data)
    record, models = job._record, []

    def remember_model(run, row):
        record(run, row)
        models.append(flatten(model_params(run.model)).clone())

    job._record = remember_model
    job.start().join(60)
    snap = job.snapshot()
    assert snap.status == FAILED and snap.round == 2 and "diverged" in snap.error
    assert len(job.result().history) == 2
    assert torch.equal(flatten(model_params(job.model)), models[1])
    assert not torch.equal(models[0], models[1])


def test_a_stopped_run_keeps_its_model(tiny_data):
    job = TrainingJob(engine_for(TrainConfig(**{**SMALL.to_dict(), "rounds": 200})), load_data=lambda: tiny_data)
    record = job._record

    def stop_after_first(run, row):
        record(run, row)
        job.stop()

    job._record = stop_after_first
    job.start().join(60)
    assert job.snapshot().status == STOPPED and job.snapshot().round == 1
    assert job.model is not None


def test_only_the_owner_token_owns_a_run():
    token = secrets.token_urlsafe(32)
    job = TrainingJob(engine_for(SMALL), owner_token=token)
    assert job.is_owner(token)
    assert not job.is_owner(secrets.token_urlsafe(32))
    assert not job.is_owner(None) and not job.is_owner("")
    assert not TrainingJob(engine_for(SMALL)).is_owner(token)  # a run without a token has no owner


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
    assert slots.try_start(first) is None
    second = TrainingJob(engine_for(SMALL), load_data=lambda: tiny_data)
    assert slots.try_start(second) == BUSY
    assert slots.wait_estimate() > 0
    assert slots.find(first.job_id) is first
    gate.set()
    first.join(60)
    assert slots.try_start(second) is None
    second.join(60)
    assert second.snapshot().status == DONE


def test_one_owner_runs_one_job_at_a_time(tiny_data):
    gate = threading.Event()

    def gated():
        gate.wait(30)
        return tiny_data

    slots = JobSlots(capacity=3, per_owner=1)
    token = secrets.token_urlsafe(32)
    first = TrainingJob(engine_for(SMALL), load_data=gated, owner_token=token)
    assert slots.try_start(first) is None
    assert slots.try_start(TrainingJob(engine_for(SMALL), owner_token=token)) == OWNER_BUSY
    other = TrainingJob(engine_for(SMALL), load_data=gated, owner_token=secrets.token_urlsafe(32))
    assert slots.try_start(other) is None
    gate.set()
    for job in (first, other):
        job.join(60)


def test_a_run_past_the_slot_deadline_stops_saying_so_and_frees_its_slot(tiny_data):
    """No run holds a slot longer than the deadline (issue 16, item 3): a 200-round run given 1 s, whose data
    takes 1.5 s to load, stops at its first check after the deadline."""

    def slow_data():
        time.sleep(1.5)
        return tiny_data

    slots = JobSlots(capacity=1, deadline_seconds=1.0)
    job = TrainingJob(engine_for(TrainConfig(**{**SMALL.to_dict(), "rounds": 200})), load_data=slow_data)
    assert slots.try_start(job) is None
    job.join(60)
    snap = job.snapshot()
    assert snap.status == STOPPED and snap.round == 0
    assert snap.stop_reason == (
        "The run was stopped: it passed this server's time limit of 1 s per run (the time budget plus a margin), "
        "so that it does not hold a training slot any longer."
    )
    following = TrainingJob(engine_for(SMALL), load_data=lambda: tiny_data)
    assert slots.try_start(following) is None
    following.join(60)


def test_a_run_stopped_by_the_deadline_keeps_the_model_of_its_last_round(tiny_data):
    slots = JobSlots(capacity=1, deadline_seconds=600.0)
    job = TrainingJob(engine_for(TrainConfig(**{**SMALL.to_dict(), "rounds": 200})), load_data=lambda: tiny_data)
    record = job._record

    def ten_minutes_pass_in_round_1(run, row):
        record(run, row)
        job._started_at -= 600.0  # as if the round had taken ten minutes

    job._record = ten_minutes_pass_in_round_1
    assert slots.try_start(job) is None
    job.join(60)
    snap = job.snapshot()
    assert snap.status == STOPPED and snap.round == 1
    assert "time limit of 10 min per run" in snap.stop_reason
    assert job.model is not None


def test_a_run_stopped_by_its_owner_gives_no_reason(tiny_data):
    job = TrainingJob(engine_for(TrainConfig(**{**SMALL.to_dict(), "rounds": 200})), load_data=lambda: tiny_data)
    job.start(deadline_seconds=600.0)
    job.stop()
    job.join(60)
    assert job.snapshot().status == STOPPED and job.snapshot().stop_reason is None


def test_the_slot_deadline_is_the_time_budget_plus_the_margin():
    budget = load_budget({"FEDMNIST_RUN_SECONDS": "100", "FEDMNIST_RUN_MARGIN_SECONDS": "20"})
    assert budget.run_deadline_seconds == 120
    assert load_budget({}).approval_seconds == 180

"""Threads per hot path and the training thread's lower priority (fed_core/limits/threads.py)."""

import os
import sys
import threading

import pytest
import torch

from fed_core.config import TrainConfig
from fed_core.engines import engine_for
from fed_core.job import DONE, TrainingJob
from fed_core.limits.threads import (
    ENV,
    NICE_ENV,
    PATH_THREADS,
    TRAINING_NICE,
    lower_this_threads_priority,
    threads_for,
    training_nice,
)

SMALL = TrainConfig(workers=2, rounds=1, train_size=600, contribution_subset=20, batch_size=32)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_each_path_has_its_measured_count_and_the_environment_overrides_them(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert threads_for("training") == PATH_THREADS["training"] == 1
    monkeypatch.setenv(ENV, "2")
    assert threads_for("training") == threads_for("mpc") == 2
    monkeypatch.setenv(ENV, "0")
    with pytest.raises(ValueError, match="FEDMNIST_TORCH_THREADS must be a whole number"):
        threads_for("mpc")


def test_the_training_niceness_can_be_set_for_a_comparison(monkeypatch):
    monkeypatch.delenv(NICE_ENV, raising=False)
    assert training_nice() == TRAINING_NICE
    monkeypatch.setenv(NICE_ENV, "0")
    assert training_nice() == 0
    monkeypatch.setenv(NICE_ENV, "20")
    with pytest.raises(ValueError, match="FEDMNIST_TRAINING_NICE must be a whole number from 0 to 19"):
        training_nice()


@linux_only
def test_lowering_a_threads_priority_leaves_the_others_alone():
    seen = []
    worker = threading.Thread(target=lambda: seen.append((lower_this_threads_priority(), niceness())))
    before = niceness()
    worker.start()
    worker.join()
    assert seen == [(True, max(TRAINING_NICE, before))]
    assert niceness() == before  # the calling (interactive) thread keeps its priority


@linux_only
def test_a_training_job_runs_at_lower_priority_on_its_paths_threads(tiny_data):
    seen = {}

    def load():  # called in the job's thread, once it has set itself up
        seen.update(nice=niceness(), threads=torch.get_num_threads())
        return tiny_data

    before = niceness()
    job = TrainingJob(engine_for(SMALL), load_data=load).start()
    job.join(120)
    assert job.snapshot().status == DONE
    assert seen == {"nice": max(TRAINING_NICE, before), "threads": threads_for("training")}
    assert niceness() == before

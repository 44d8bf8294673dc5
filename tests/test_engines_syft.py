"""The syft engine: owners' jobs train like the in-process pool, the aggregator never reads private data,
and an owner who approves by hand holds the round until it does."""

import gc
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from fed_core.client import TrainingStopped
from fed_core.config import TrainConfig
from fed_core.engines import engine_for
from fed_core.engines.syft_engine import SyftEngine
from ui import session

SMALL = dict(rounds=2, train_size=4000, contribution_subset=200)
ONE_OWNER_BY_HAND = TrainConfig(
    workers=1, rounds=1, train_size=1000, contribution_subset=100, engine="syft", manual_approval=True
)

# Python's audit hooks see every open() in this process (syft's, torch's, ours) and cannot be removed,
# so one hook records into whichever list a test hands it.
_opened: list[tuple[str, str, str]] | None = None


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        _opened.append((threading.current_thread().name, path, str(args[1])))


sys.addaudithook(_record_open)


def is_private(path: str) -> bool:
    """An owner's private copy in its datasite, or the staging file it was published from."""
    return "/private/" in path or path.endswith("/private.pt")


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_owners_train_like_inprocess_and_the_aggregator_never_opens_private_files(mnist):
    global _opened
    engine = engine_for(TrainConfig(workers=2, engine="syft", **SMALL))
    _opened = []
    try:
        run = engine.run(mnist)
    finally:
        opened, _opened = _opened, None

    expected = engine_for(TrainConfig(workers=2, **SMALL)).run(mnist)
    accuracies = [r.test_accuracy for r in expected.history]
    assert [r.test_accuracy for r in run.history] == pytest.approx(accuracies, abs=0.005)
    assert run.history[-1].test_accuracy > 0.8
    # The jobs trained on the private shards: the mock holds 16 images, each shard 2000.
    assert [row["examples"] for row in run.history[-1].workers] == [2000, 2000]

    aggregator = threading.current_thread().name
    private_readers = {thread for thread, path, _ in opened if is_private(path)}
    assert private_readers == {"datasite-owner0", "datasite-owner1"}  # the check sees owners read them
    assert aggregator not in private_readers
    assert any(path.endswith("outputs/update.pt") for thread, path, _ in opened if thread == aggregator)
    aggregator_files = [path for _, path, _ in opened if "/aggregator-" in path]
    assert aggregator_files and not any(is_private(path) for path in aggregator_files)

    for site in engine.datasites():
        assert site.private_images == 2000 and site.private_bytes > 2000 * 28 * 28
        assert tuple(site.mock_images.shape) == (16, 28, 28)
        assert [(j.round, j.status, j.approval) for j in site.jobs] == [(1, "done", "auto"), (2, "done", "auto")]
        assert all(j.seconds > 0 for j in site.jobs)
    [root] = {re.search(r".*/fed-syft-[^/]+", path).group(0) for _, path, _ in opened if "/fed-syft-" in path}
    assert not Path(root).exists(), "the datasites' folders are deleted after the run"


def run_in_thread(engine: SyftEngine, data, stop: threading.Event) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["run"] = engine.run(data, should_stop=stop.is_set)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, outcome


def test_manual_approval_holds_the_round_until_the_owner_approves(mnist):
    engine = engine_for(ONE_OWNER_BY_HAND)
    stop = threading.Event()
    thread, outcome = run_in_thread(engine, mnist, stop)
    try:
        wait_for(lambda: engine.datasites() and engine.datasites()[0].awaiting_approval)
        time.sleep(1.5)
        assert thread.is_alive() and not outcome, "the round went on without approval"
        [job_name] = engine.datasites()[0].awaiting_approval
        engine.approve(0, job_name)
        thread.join(120)
    finally:
        stop.set()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["run"].history) == 1
    [job] = engine.datasites()[0].jobs
    assert job.status == "done" and job.approval == "manual" and job.waited >= 1.5


def test_stop_while_awaiting_approval_ends_the_run_its_owners_and_syfts_threads(mnist):
    before = set(threading.enumerate())
    engine = engine_for(ONE_OWNER_BY_HAND)
    stop = threading.Event()
    thread, outcome = run_in_thread(engine, mnist, stop)
    wait_for(lambda: engine.datasites() and engine.datasites()[0].awaiting_approval)
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome.pop("error"), TrainingStopped)

    def leftover_threads():
        gc.collect()  # syft's idle thread pools end once its released clients are collected
        return [t.name for t in set(threading.enumerate()) - before]

    wait_for(lambda: not leftover_threads(), timeout=10)


def test_train_page_shows_the_datasites_and_approves_jobs_with_a_button(mnist):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py").run()
    next(s for s in at.selectbox if s.label == "Where workers train").set_value("syft").run()
    next(t for t in at.toggle if t.label == "Approve jobs manually").set_value(True)
    next(w for w in at.number_input if w.label == "Workers").set_value(2)
    next(w for w in at.number_input if w.label == "Rounds").set_value(1)
    next(b for b in at.button if b.label == "Start").click().run()
    job = at.session_state[session.JOB]
    try:
        assert (job.config.engine, job.config.workers) == ("syft", 2)

        def approve_buttons():
            at.run()  # run_every never fires in AppTest: poll by hand
            return [b.label for b in at.button if b.label.startswith("Approve ")]

        wait_for(lambda: len(approve_buttons()) == 2)
        assert any("wait for their owner's approval" in w.value for w in at.warning)
        assert any(e.label == "Datasites: 2 data owners" for e in at.expander)
        for label in ["Approve round-001-worker-0", "Approve round-001-worker-1"]:
            next(b for b in at.button if b.label == label).click().run()
        job.join(120)
        at.run()
        assert not at.exception
        assert job.snapshot().status == "done"
        tables = [d.value for d in at.dataframe if "approval" in d.value.columns]
        assert [list(t["approval"]) for t in tables] == [["manual"], ["manual"]]
    finally:
        job.stop()
        job.join(60)

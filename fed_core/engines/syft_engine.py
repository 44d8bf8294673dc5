"""The syft engine: every worker is a syft data owner and the aggregator a data scientist.

Each owner publishes its MNIST shard as a syft-rds dataset: a mock file anyone it shares with may
read (random images of the same shape) and a private file only approved jobs read. Each round the
aggregator submits one bash job per sampled owner. The owner approves the job (automatically, if it is
exactly the expected training script and its local settings are within the owner's limits, owner_limits.py,
or when a person presses Approve; a job over the limits is rejected), syft's job runner runs it, and
the owner shares back only the outputs: the weight delta, the sample count and the metrics of a
:class:`~fed_core.federation.trainer.WorkerUpdate`.

Warm workers and the trust boundary. A fresh Python process pays about 4 s to import torch and take its
first gradient, so the approved script does not train itself. It runs ``syft_handoff.py`` (standard
library only, started in tens of milliseconds), which hands the job's folder to its owner over a Unix
socket the owner made in its own SyftBox folder. The owner accepts only the folder of a job it approved
and has not run yet, whose files (syft's ``run.sh`` and everything in ``code/``) are byte for byte what
it approved, and has a warm worker (:mod:`~fed_core.engines.syft_warm_worker`, borrowed from the server's
pool of at most ``SYFT_CONCURRENT_JOBS``) run fed_core's fixed training function on the owner's private
shard with the job's settings and weights. The worker never runs code from the job folder; the update
lands in the job's ``outputs/``, where syft collects it. What the owner's policy protects is unchanged:
nothing runs on its data but the exact script it computes itself, from the aggregator, with exactly the
expected files; the policy now also reads ``run.sh``, the file syft actually executes.

Transport: each owner is paired with the aggregator over syft's in-memory Drive service, through the
public helper syft's own tests use (``SyftRDSClient.pair_with_mock_drive_service_connection``), so a
whole federation runs offline in this process. In a real deployment each owner logs in with its own
Google account (``syft_rds.login_do``) and the aggregator with its own (``syft_rds.login_ds``); see
docs/engines.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from syft_perms import SyftPermContext
from syft_rds import SyftRDSClient, job_matches_criteria

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist
from fed_core.engines import Engine, EngineError, Rounds, StopCheck
from fed_core.engines.owner_limits import OwnerLimits
from fed_core.engines.syft_handoff import MessageError, owner_socket, receive_message, send_message
from fed_core.engines.syft_warm_pool import (
    PoolClosed,
    WarmPool,
    WarmWorker,
    WarmWorkerError,
    join_shared_pool,
    leave_shared_pool,
)
from fed_core.engines.syft_warm_worker import TrainingRequest
from fed_core.engines.worker_job import (
    GLOBAL_MODEL_FILE,
    JOB_FILE,
    UPDATE_FILE,
    LocalTask,
    encode_vector,
    load_shard,
    load_update,
    save_shard,
)
from fed_core.federation.server import FederatedRun
from fed_core.limits.budget import duration_text, load_budget
from fed_core.vocabulary import TrainingStopped, WorkerUpdate

log = logging.getLogger(__name__)

AGGREGATOR = "aggregator@example.org"
DATASET = "mnist-shard"
SCRIPT_FILE = "script.sh"  # syft's name for a bash job's script inside the job's code folder
RUN_FILE = "run.sh"  # the copy of the script, next to the code folder, that syft's job runner executes
JOB_FILES = (SCRIPT_FILE, JOB_FILE, GLOBAL_MODEL_FILE)
SHARED_LOGS = ("stdout.txt", "stderr.txt", "returncode.txt")  # the files syft's share_logs opens to the aggregator
MOCK_IMAGES = 16
# Each side wakes the other when it has sent something (a stand-in for the Drive polling of a real
# deployment), so an owner's own polling is only a fallback: each of its syncs costs CPU. A waiting
# aggregator also checks between polls whether the user pressed Stop.
OWNER_POLL_SECONDS = 30.0
AGGREGATOR_POLL_SECONDS = 1.0
HANDOFF_POLL_SECONDS = 0.05  # how often an owner running a job checks whether syft's runner has finished
HANDOFF_READ_SECONDS = 5.0  # how long an owner waits for a connected job to say which folder it is
HANDOFF_FILE = Path(__file__).resolve().with_name("syft_handoff.py")


class SyftJobFailed(EngineError):
    """An owner rejected a round's job, or the job failed on the owner's machine."""


class ApprovalTimedOut(TrainingStopped, EngineError):
    """An owner neither approved nor rejected a round's job in time: the run ends as if stopped, keeping its model.

    A TrainingStopped for the Train page's job (stopped, with this message as the reason), and an EngineError
    for the command line (which keeps the finished rounds and says why, as for a failed run).
    """


class JobRefused(RuntimeError):
    """A connection to an owner's socket asked for something other than a job the owner approved."""


def owner_email(worker: int) -> str:
    return f"owner{worker}@example.org"


def job_script() -> str:
    """The bash job every round sends: hand the job to its owner's warm worker, with the project's interpreter.

    It is the same text every round (round, seed and settings travel in job.json), so an owner can
    approve it automatically by comparing it with this exact script. ``-I -S`` keep the handoff to the
    standard library: no site-packages, no PYTHON* variables, no torch.
    """
    return (
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        "cd code\n"
        f"exec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(HANDOFF_FILE))}\n"
    )


def follows_policy(job) -> bool:
    """The owner's policy: only the project's training script, from the aggregator, and nothing else.

    syft's runner executes the job's ``run.sh``, which ``job_matches_criteria`` does not read (it checks
    ``code/script.sh``), so run.sh must be the same script too.
    """
    return (
        job_matches_criteria(
            job,
            required_file_contents={SCRIPT_FILE: job_script()},
            required_file_paths=list(JOB_FILES),
            allowed_users=[AGGREGATOR],
        )
        and job.run_script == job_script()
    )


def job_fingerprint(code_dir: Path) -> str:
    """SHA-256 of what a job runs and reads: syft's run.sh and every file in its code folder but outputs/."""
    job_dir = code_dir.parent
    outputs = code_dir / Path(UPDATE_FILE).parent
    files = [job_dir / RUN_FILE, *sorted(p for p in code_dir.rglob("*") if p.is_file() and outputs not in p.parents)]
    digest = hashlib.sha256()
    for path in files:
        name, data = str(path.relative_to(job_dir)).encode(), path.read_bytes() if path.exists() else b""
        digest.update(b"%d:%s%d:%s" % (len(name), name, len(data), data))
    return digest.hexdigest()


# --- syft's progress prints ------------------------------------------------------------------------

SYFT_PACKAGES = ("syft", "syft_rds", "syft_job", "syft_dataset")


def _print_to_log(*values: object, sep: str | None = " ", end: str | None = "\n", **_: object) -> None:
    text = (sep or " ").join(map(str, values)).strip()
    if text:
        log.debug("syft: %s", text)


def send_syft_prints_to_log() -> None:
    """syft reports progress with print(); in a server or behind a progress bar those lines belong in the log.

    Each syft module's own name ``print`` is pointed at the log, so nothing else in the process changes
    (sys.stdout stays as it is). Modules syft imports later keep printing; calling this again covers them.
    """
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in SYFT_PACKAGES and module is not None:
            module.print = _print_to_log


# --- the owners' side ------------------------------------------------------------------------------


@dataclass
class JobRecord:
    """One job as its owner saw it: when it came, how it was approved, how long it ran."""

    name: str
    round: int
    arrived: float  # time.time() when the owner first saw it
    # then "queued" (for a warm worker), "running", "done", "failed", "rejected" or "not approved in time"
    status: str = "awaiting approval"
    approval: str = ""  # "auto" or "manual"
    waited: float | None = None  # seconds from arrival to approval
    started: float | None = None  # time.time() when it got a warm worker
    seconds: float | None = None  # seconds from then to its outputs being ready to share


@dataclass(frozen=True)
class DatasiteView:
    """What the Train page shows of one datasite."""

    worker: int
    owner: str
    mock_images: torch.Tensor  # what the aggregator sees
    mock_labels: torch.Tensor
    private_images: int  # sizes the owner reports; the private file itself is never shown
    private_bytes: int
    jobs: list[JobRecord] = field(default_factory=list)

    @property
    def awaiting_approval(self) -> list[str]:
        return [j.name for j in self.jobs if j.status == "awaiting approval"]


class DataOwner:
    """A syft data owner: publishes its shard, then reviews and runs the aggregator's jobs, in its own thread.

    The thread plays the owner's own computer, where a real owner runs this job loop: every syft call
    of this owner and every read of its files happen in it, or, while a job runs, in its handoff thread
    (and its warm worker, a process, reads the private file). The aggregator's calls on the Drive they
    share wait for ``drive_lock``.
    """

    def __init__(
        self,
        worker: int,
        client: SyftRDSClient,
        manual_approval: bool,
        pool: WarmPool,
        limits: OwnerLimits | None = None,
    ):
        self.worker = worker
        self.client = client
        self.drive_lock = threading.Lock()  # syft's in-memory Drive is not thread-safe: one side at a time
        self.manual_approval = manual_approval
        self.pool = pool
        self.limits = limits or OwnerLimits()
        self.private_images = 0
        self.private_bytes = 0
        self._private_file: Path | None = None
        self._listener: socket.socket | None = None
        self._records: dict[str, JobRecord] = {}
        self._approved_by_person: set[str] = set()
        self._approved: dict[Path, str] = {}  # code folder of each approved job not run yet: its fingerprint
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.replied = threading.Event()  # set once the owner has shared job outputs or rejections
        self._closed = threading.Event()
        self._published = threading.Event()
        self._failure: Exception | None = None
        self._thread: threading.Thread | None = None

    def start(self, images: torch.Tensor, labels: torch.Tensor, staging: Path) -> None:
        """Start the owner's thread; returns once its dataset is published."""
        self._thread = threading.Thread(
            target=self._work, args=(images, labels, staging), name=f"datasite-owner{self.worker}", daemon=True
        )
        self._thread.start()
        self._published.wait()
        if self._failure:
            raise self._failure

    def close(self, timeout: float = 60.0) -> None:
        """Stop the owner's thread (a job it is running finishes first) and its socket."""
        self._closed.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._listener is not None:
            path = self._listener.getsockname()
            self._listener.close()
            Path(path).unlink(missing_ok=True)

    def wake(self) -> None:
        """New jobs were sent. (A real owner's job loop polls Drive instead.)"""
        self._wake.set()

    def awaits_verdict(self, job_name: str) -> bool:
        """Whether ``job_name`` has neither been approved nor rejected yet (or not even seen)."""
        with self._lock:
            record = self._records.get(job_name)
            return record is None or record.status == "awaiting approval"

    def expire(self, job_name: str) -> None:
        """The aggregator stopped waiting for ``job_name``: it no longer awaits approval (no Approve button)."""
        with self._lock:
            record = self._records.get(job_name)
            if record is not None and record.status == "awaiting approval":
                record.status = "not approved in time"

    def approve(self, job_name: str) -> None:
        """A person approved ``job_name`` on the page; the owner's thread approves it in syft."""
        with self._lock:
            self._approved_by_person.add(job_name)
        self._wake.set()

    def records(self) -> list[JobRecord]:
        with self._lock:
            return [replace(r) for r in self._records.values()]

    def _work(self, images: torch.Tensor, labels: torch.Tensor, staging: Path) -> None:
        try:
            self._publish(images, labels, staging)
            self._listen()
        except Exception as exc:  # start() raises it in the aggregator's thread
            self._failure = exc
        self._published.set()
        while not (self._failure or self._closed.is_set()):
            self._wake.wait(OWNER_POLL_SECONDS)
            self._wake.clear()
            try:
                self._serve_once()
            except PoolClosed:  # the run ended while this owner waited for a warm worker
                return
            except Exception:  # keep serving: the aggregator sees the job fail
                log.exception("owner %s could not process its jobs", self.worker)

    def _publish(self, images: torch.Tensor, labels: torch.Tensor, staging: Path) -> None:
        """Create the syft-rds dataset: random mock images for the aggregator, the shard privately."""
        staging.mkdir(parents=True)
        gen = torch.Generator().manual_seed(self.worker)
        save_shard(
            staging / "mock.pt",
            torch.randint(0, 256, (MOCK_IMAGES, 28, 28), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (MOCK_IMAGES,), generator=gen),
        )
        save_shard(staging / "private.pt", images, labels)
        self.private_images, self.private_bytes = len(labels), (staging / "private.pt").stat().st_size
        with self.drive_lock:
            self.client.create_dataset(
                name=DATASET,
                mock_path=staging / "mock.pt",
                private_path=staging / "private.pt",
                summary=f"MNIST shard of worker {self.worker}",
                users=[AGGREGATOR],
            )
            [self._private_file] = self.client.datasets.get(DATASET, datasite=owner_email(self.worker)).private_files
        shutil.rmtree(staging)  # syft keeps its own copies in the datasite

    def _listen(self) -> None:
        """Open the socket the owner's approved jobs hand their folder to (see syft_handoff)."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(owner_socket(self.client.syftbox_folder)))
        self._listener.listen()
        self._listener.settimeout(HANDOFF_POLL_SECONDS)

    def _serve_once(self) -> None:
        with self.drive_lock:
            jobs = self.client.jobs  # syncs first
            pending = [job for job in jobs if job.status == "pending"]
            if pending:
                self._delete_collected(jobs)
            verdicts = [self._review(job) for job in pending]
        approved = [job for job, verdict in zip(pending, verdicts) if verdict == "approved"]
        if approved:
            self._run_jobs(approved)
        if approved or "rejected" in verdicts:
            with self.drive_lock:
                self.client.sync()  # shares the outputs, logs and rejections with the aggregator
            self.replied.set()

    def _delete_collected(self, jobs: list) -> None:
        """Delete the jobs that ran, and the read rules syft added for their outputs and logs.

        The aggregator collected their outputs before it sent more jobs. syft re-reads every job's files,
        and its permission files, many times on each sync, so keeping them would make every round slower
        than the last. The owner's own record of each job (:meth:`records`) stays.
        """
        finished = [job for job in jobs if job.status in ("done", "failed")]
        if not finished:
            return
        datasite = self.client.syftbox_folder / owner_email(self.worker)
        rules = SyftPermContext(datasite).modifier
        for job in finished:
            review = job.job_review_path.relative_to(datasite)
            rules.remove_all_rules(str(review / "outputs"), is_folder=True)  # what share_outputs added
            for log_file in SHARED_LOGS:  # and share_logs
                rules.remove_all_rules(str(review / log_file))
            shutil.rmtree(job.job_submission_path, ignore_errors=True)
            shutil.rmtree(job.job_review_path, ignore_errors=True)

    def _review(self, job) -> str:
        """Approve ``job`` if policy (:func:`follows_policy`) and this owner's limits allow, and, if asked for,
        a person; a job over the limits is rejected without asking anyone.

        Returns "approved", "rejected", or "waiting" (for a person to approve it).
        """
        refusal = self._refusal(job)
        with self._lock:
            record = self._records.setdefault(job.name, JobRecord(job.name, _round_of(job), time.time()))
            if refusal:
                job.reject(refusal)
                record.status = "rejected"
                return "rejected"
            if self.manual_approval and job.name not in self._approved_by_person:
                return "waiting"
            record.approval = "manual" if self.manual_approval else "auto"
            record.status, record.waited = "queued", time.time() - record.arrived
        job.approve(reason="FedAvg local training step", approval_method=record.approval)
        with self._lock:
            self._approved[job.code_dir.resolve()] = job_fingerprint(job.code_dir)
        return "approved"

    def _refusal(self, job) -> str | None:
        """Why this owner rejects ``job`` (shared with the aggregator), or None if it may run."""
        if not follows_policy(job):
            return "Only the project's training script may run on this data."
        try:
            task = read_task(job.code_dir)
        except ValueError as exc:
            return str(exc)
        over = self.limits.problems(task, self.private_images)
        if over:
            return f"Its local settings are over {owner_email(self.worker)}'s limits: {'; '.join(over)}."
        return None

    def _run_jobs(self, jobs: list) -> None:
        """Run the approved jobs with a warm worker, once one of the server's pool is free."""
        with self.pool.borrow(give_up=self._closed) as warm_worker:
            started = time.time()
            with self._lock:
                for job in jobs:
                    self._records[job.name].status, self._records[job.name].started = "running", started
            self._run_approved(warm_worker)
            seconds = time.time() - started
        statuses = {job.name: job.status for job in self.client.job_client.jobs}
        with self._lock:
            for job in jobs:
                self._approved.pop(job.code_dir.resolve(), None)  # an approval runs once
                record = self._records[job.name]
                record.status, record.seconds = statuses.get(job.name, "failed"), seconds

    def _run_approved(self, warm_worker: WarmWorker) -> None:
        """syft's job runner runs the approved jobs; meanwhile a thread hands what they ask for to ``warm_worker``."""
        finished = threading.Event()
        handoffs = threading.Thread(
            target=self._serve_handoffs, args=(warm_worker, finished), name=f"datasite-owner{self.worker}-handoff"
        )
        handoffs.start()
        try:
            # Running a job touches only the owner's own files: the Drive stays free meanwhile.
            self.client.job_runner.process_approved_jobs(
                stream_output=False,
                timeout=math.ceil(self.limits.max_seconds),  # syft's default, 5 min, is too short for some runs
                share_outputs_with_submitter=True,
                share_logs_with_submitter=True,
            )
        finally:
            finished.set()
            handoffs.join(HANDOFF_READ_SECONDS)
            if handoffs.is_alive():  # syft's runner killed a job (timeout) whose training goes on: stop it
                warm_worker.close()
                handoffs.join()

    def _serve_handoffs(self, warm_worker: WarmWorker, finished: threading.Event) -> None:
        """Answer the jobs syft's runner starts, one at a time, until it has run them all."""
        while not finished.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(HANDOFF_READ_SECONDS)
                try:
                    with connection.makefile("rwb") as stream:
                        send_message(stream, self._answer(receive_message(stream), warm_worker))
                except (OSError, EOFError, MessageError) as exc:
                    log.warning("owner %s: a connection to its socket broke off: %s", self.worker, exc)

    def _answer(self, message: dict, warm_worker: WarmWorker) -> dict:
        try:
            return {"summary": warm_worker.train(self.training_request(message))}
        except (JobRefused, WarmWorkerError) as exc:
            return {"error": str(exc)}

    def training_request(self, message: dict) -> TrainingRequest:
        """What the warm worker runs for a job that handed over ``message``; raises JobRefused.

        The message names only the job's code folder. It must be the folder of a job this owner approved
        and has not run yet, with every file as it was when approved; the request trains on this owner's
        private file, with that job's settings and weights, and writes that job's update file.
        """
        if sorted(message) != ["code_dir"] or not isinstance(message["code_dir"], str):
            raise JobRefused("a job hands over its code folder and nothing else")
        code_dir = Path(message["code_dir"]).resolve()
        with self._lock:
            fingerprint = self._approved.pop(code_dir, None)
        if fingerprint is None:
            raise JobRefused(f"{code_dir.parent.name} is not a job {owner_email(self.worker)} approved to run now")
        if job_fingerprint(code_dir) != fingerprint:
            raise JobRefused(f"the files of {code_dir.parent.name} changed after it was approved")
        try:
            task = read_task(code_dir)  # as reviewed: the fingerprint says the file is unchanged
        except ValueError as exc:
            raise JobRefused(str(exc)) from None
        threads = max(1, (os.cpu_count() or 1) // self.pool.size)  # the owner's cores, shared by its pool
        return TrainingRequest(task, threads, self._private_file, code_dir / GLOBAL_MODEL_FILE, code_dir / UPDATE_FILE)


def read_task(code_dir: Path) -> LocalTask:
    """The training task a job's ``job.json`` asks for; raises ValueError saying why it is not one."""
    try:
        job = json.loads((code_dir / JOB_FILE).read_text())
        if job["dataset"] != DATASET:
            raise ValueError(f"dataset {job['dataset']!r} is not {DATASET!r}")
        return LocalTask.from_dict(job["task"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{JOB_FILE} is not a training task: {exc}") from None


def _round_of(job) -> int:
    try:
        return int(read_task(job.code_dir).round)
    except (ValueError, TypeError):
        return 0


# --- the aggregator's side -------------------------------------------------------------------------


class SyftPool:
    """The aggregator: one job per sampled owner per round; only the jobs' outputs come back.

    It waits ``approval_seconds`` at most for an owner to approve (or reject) a job: an owner who never
    answers, say a manual approval nobody gives, must not hold the server's training slot forever.
    """

    def __init__(
        self,
        clients: dict[int, SyftRDSClient],
        owners: dict[int, DataOwner],
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
        approval_seconds: float = float("inf"),
    ) -> None:
        self.clients = clients
        self.owners = owners
        self.config = config
        self.should_stop = should_stop
        self.approval_seconds = approval_seconds

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]:
        weights = encode_vector(global_vector)
        submitted = time.monotonic()
        names = {w: self._submit(w, LocalTask.for_round(self.config, w, round_idx), weights) for w in workers}
        return [self._collect(w, names[w], submitted) for w in workers]

    def _submit(self, worker: int, task: LocalTask, weights: str) -> str:
        name = f"round-{task.round:03d}-worker-{worker}"
        client = self.clients[worker]
        with self.owners[worker].drive_lock:
            # submit_bash_job only carries the script: the task and the weights are added to the job's
            # code folder before its files are pushed.
            job_dir = client.job_client.submit_bash_job(owner_email(worker), job_script(), job_name=name)
            self.write_job(job_dir, task, weights)
            client.sync_engine.push_job_files(job_dir)
        self.owners[worker].wake()
        return name

    def write_job(self, job_dir: Path, task: LocalTask, weights: str) -> None:
        """Add the round's task and weights to the code folder of a job syft made with only the script."""
        code = job_dir / "code"
        (code / JOB_FILE).write_text(json.dumps({"dataset": DATASET, "task": task.to_dict()}))
        (code / GLOBAL_MODEL_FILE).write_text(weights)

    def _collect(self, worker: int, name: str, submitted: float) -> WorkerUpdate:
        owner = self.owners[worker]
        while True:
            with owner.drive_lock:
                job = next(j for j in self.clients[worker].jobs if j.name == name)
                if job.status == "done":
                    return load_update(next(p for p in job.output_paths if p.name == "update.pt"))
                if job.status == "rejected":
                    raise SyftJobFailed(
                        f"Worker {worker}'s job {name} was rejected by {owner_email(worker)}: {job.review_reason}"
                    )
                if job.status == "failed":
                    raise SyftJobFailed(
                        f"Worker {worker}'s job {name} failed on {owner_email(worker)}. {_last_error_line(job)}".strip()
                    )
            # The owner's own record, not syft's status: the aggregator sees "pending" until the owner syncs,
            # which it does only once an approved job has run.
            if time.monotonic() - submitted > self.approval_seconds and owner.awaits_verdict(name):
                owner.expire(name)
                raise ApprovalTimedOut(
                    f"The run ended: {owner_email(worker)} did not approve worker {worker}'s job {name} within "
                    f"{duration_text(self.approval_seconds)}."
                )
            if self.should_stop and self.should_stop():
                raise TrainingStopped()
            owner.replied.wait(AGGREGATOR_POLL_SECONDS)
            owner.replied.clear()  # cleared before the next check, so no reply is missed


def _last_error_line(job) -> str:
    stderr = job.job_review_path / "stderr.txt"
    lines = stderr.read_text().strip().splitlines() if stderr.exists() else []
    return f"Its last error line: {lines[-1]}" if lines else ""


# --- the engine ------------------------------------------------------------------------------------


class SyftEngine(Engine):
    """Runs a federation of syft datasites; the Train page reads :meth:`datasites` and calls :meth:`approve`."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.manual_approval = config.manual_approval
        self.approval_seconds = load_budget().approval_seconds  # this server's patience (FEDMNIST_APPROVAL_SECONDS)
        self.owner_limits = OwnerLimits.for_run(config)  # every owner's limits on the settings a job asks for
        self._owners: dict[int, DataOwner] = {}
        self._mocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._clients: list[SyftRDSClient] = []
        self._root: Path | None = None
        self._pool: WarmPool | None = None

    def host(self, rounds: Rounds, should_stop: StopCheck) -> FederatedRun:
        send_syft_prints_to_log()
        try:
            return rounds(self._connect)
        finally:
            self.close()

    def _connect(
        self,
        model,
        data: Mnist,
        shards: list[torch.Tensor],
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> SyftPool:
        """Pair the aggregator with one new datasite per worker, each publishing its shard.

        The warm workers start first, so they warm up while the owners publish.
        """
        self._pool = join_shared_pool(config.model, len(shards))
        self._root = Path(tempfile.mkdtemp(prefix="fed-syft-"))
        self._owners, self._mocks = {}, {}
        clients = {}
        for worker, shard in enumerate(shards):
            clients[worker], owner_client = SyftRDSClient.pair_with_mock_drive_service_connection(
                email1=owner_email(worker),
                email2=AGGREGATOR,
                base_path1=str(self._root / f"owner{worker}"),
                base_path2=str(self._root / f"aggregator-{worker}"),
                use_in_memory_cache=False,
            )
            self._clients += [clients[worker], owner_client]
            owner = DataOwner(worker, owner_client, self.manual_approval, self._pool, self.owner_limits)
            self._owners = {**self._owners, worker: owner}  # a new dict, so the page never sees one change
            # The demo hands each owner its shard; from here on only the owner's thread touches it.
            owner.start(data.train_images[shard], data.train_labels[shard], self._root / f"staging{worker}")
            with owner.drive_lock:  # what the aggregator sees of the dataset
                mock = clients[worker].datasets.get(DATASET, datasite=owner_email(worker)).mock_files[0]
            self._mocks[worker] = load_shard(mock)
        return SyftPool(clients, self._owners, config, should_stop, self.approval_seconds)

    def datasites(self) -> list[DatasiteView]:
        return [
            DatasiteView(w, owner_email(w), *self._mocks[w], o.private_images, o.private_bytes, o.records())
            for w, o in sorted(self._owners.items())
            if w in self._mocks
        ]

    def approve(self, worker: int, job_name: str) -> None:
        self._owners[worker].approve(job_name)

    def close(self) -> None:
        """Stop the owners' threads, leave the warm pool, release syft's clients and delete the datasites' folders.

        The page keeps showing what it showed: the mock images, the sizes and the job records.
        """
        for owner in self._owners.values():
            owner.close()
            owner.client = None
        if self._pool is not None:
            leave_shared_pool()
            self._pool = None
        for client in self._clients:
            client.peer_manager.shutdown()
        self._clients.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

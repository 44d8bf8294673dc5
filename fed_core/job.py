"""A federated run in a background thread, watched through thread-safe snapshots.

The thread never touches any UI: a page (or the CLI) polls :meth:`TrainingJob.snapshot`. A run belongs to
whoever holds its secret owner token: only they may stop it or take its model; anyone with its id may watch.
:class:`JobSlots` caps how many runs share the machine at once, and how many one owner runs, and how long a
run may hold its slot: past that deadline the run stops as if its owner had pressed Stop, keeping the model of
its last finished round, and says why.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fed_core.config import estimate_seconds
from fed_core.data.mnist import Mnist, load_mnist
from fed_core.engines import Engine
from fed_core.federation.server import FederatedRun, RoundRecord, ServerView, cumulative_contributions
from fed_core.federation.shapley import cumulative_shapley
from fed_core.limits.budget import duration_text
from fed_core.limits.memory import give_back
from fed_core.limits.threads import lower_this_threads_priority, threads_for
from fed_core.vocabulary import TrainingStopped

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, STOPPED, FAILED = "pending", "running", "done", "stopped", "failed"
BUSY, OWNER_BUSY = "busy", "owner_busy"  # why JobSlots.try_start refused a job


@dataclass
class JobSnapshot:
    status: str
    round: int
    total_rounds: int
    history: list[dict] = field(default_factory=list)
    label_histogram: list[list[int]] = field(default_factory=list)
    cumulative_contributions: dict[int, float] = field(default_factory=dict)
    cumulative_shapley: dict[int, tuple[float, float]] = field(default_factory=dict)  # worker: (sum, 95% half-width)
    server_view: ServerView | None = None  # the latest round's view of one worker's update
    elapsed: float = 0.0
    eta: float | None = None
    error: str | None = None
    stop_reason: str | None = None  # why a stopped run stopped, when not by its owner (a deadline, a time-out)

    @property
    def finished(self) -> bool:
        return self.status in (DONE, STOPPED, FAILED)


class TrainingJob:
    """One federated run. ``start()`` launches it; ``stop()`` asks it to stop between batches."""

    def __init__(
        self,
        engine: Engine,
        load_data: Callable[[], Mnist] = load_mnist,
        torch_threads: int | None = None,
        owner_token: str | None = None,
    ) -> None:
        self.engine = engine  # from fed_core.engines.engine_for, which validated its config
        self.config = engine.config
        self._owner_token = owner_token  # a secret (secrets.token_urlsafe) of the session that started the run
        # One intra-op thread per run (fed_core.limits.threads): two OpenMP threads that share the cores with a browser,
        # another run or a web server spin-wait for each other, measured here at 5-10x slower rounds.
        self.torch_threads = torch_threads or threads_for("training")
        self.job_id = uuid.uuid4().hex[:12]
        self._load_data = load_data
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._status = PENDING
        self._run: FederatedRun | None = None
        self._history: list[dict] = []
        self._server_view: ServerView | None = None
        self._label_histogram: list[list[int]] = []
        self._error: str | None = None
        self._stop_reason: str | None = None
        self._deadline: float | None = None  # seconds the run may take from start(), or None for no limit
        self._started_at = 0.0
        self._finished_at: float | None = None
        self._thread = threading.Thread(target=self._work, name="federated-run", daemon=True)

    def is_owner(self, token: str | None) -> bool:
        """Whether ``token`` is this run's owner token, compared in constant time; a run without one has no owner."""
        if not token or not self._owner_token:
            return False
        return hmac.compare_digest(token.encode(), self._owner_token.encode())

    def same_owner(self, other: TrainingJob) -> bool:
        return other.is_owner(self._owner_token)

    def start(self, deadline_seconds: float | None = None) -> TrainingJob:
        """Launch the run; past ``deadline_seconds`` (if given) it stops itself at its next stop check."""
        self._deadline = deadline_seconds
        self._started_at = time.perf_counter()
        self._status = RUNNING
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _work(self) -> None:
        torch.set_num_threads(self.torch_threads)  # applies to this thread only
        lower_this_threads_priority()  # a visitor's Draw classification or page rerun goes first
        try:
            self.engine.run(
                self._load_data(),
                on_start=self._attach,
                on_round=self._record,
                should_stop=self._should_stop,
            )
            self._finish(DONE)
        except TrainingStopped as exc:  # by the owner, the deadline, or an engine's own time-out (its message)
            with self._lock:
                self._stop_reason = self._stop_reason or str(exc) or None
            self._finish(STOPPED)
        except Exception as exc:  # reported to the page through the snapshot, and logged in full here
            log.exception("federated run failed")
            self._finish(FAILED, str(exc) or type(exc).__name__)

    def _should_stop(self) -> bool:
        """Whether the owner pressed Stop or the run is past its deadline (then it says so)."""
        if self._stop.is_set():
            return True
        if self._deadline is not None and time.perf_counter() - self._started_at > self._deadline:
            with self._lock:
                self._stop_reason = (
                    "The run was stopped: it passed this server's time limit of "
                    f"{duration_text(self._deadline)} per run (the time budget plus a margin), so that it does not "
                    "hold a training slot any longer."
                )
            self._stop.set()
            return True
        return False

    def _attach(self, run: FederatedRun) -> None:
        with self._lock:
            self._run = run
            self._label_histogram = run.label_histogram

    def _record(self, run: FederatedRun, record: RoundRecord) -> None:
        # Records are never changed once made, so snapshots can share them.
        row = record.to_dict()
        with self._lock:
            self._history.append(row)
            self._server_view = run.server_view
        give_back()  # the round is over: the free heap pages of its training and scoring go back to the system

    def _finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self._status, self._error = status, error
            self._finished_at = time.perf_counter()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            history = list(self._history)
            rows = [r["workers"] for r in history]
            elapsed = (self._finished_at or time.perf_counter()) - self._started_at if self._started_at else 0.0
            return JobSnapshot(
                status=self._status,
                round=len(history),
                total_rounds=self.config.rounds,
                history=history,
                label_histogram=self._label_histogram,
                cumulative_contributions=cumulative_contributions(self.config.workers, rows),
                cumulative_shapley=cumulative_shapley(self.config.workers, rows),
                server_view=self._server_view,
                elapsed=elapsed,
                eta=self._eta(history, elapsed),
                error=self._error,
                stop_reason=self._stop_reason if self._status == STOPPED else None,
            )

    def _eta(self, history: list[dict], elapsed: float) -> float | None:
        if self._status != RUNNING:
            return None
        if not history:
            return estimate_seconds(self.config)
        per_round = history[-1]["elapsed"] / len(history)
        return max(0.0, per_round * self.config.rounds - elapsed)

    def result(self) -> FederatedRun | None:
        """The finished run, or None while it runs or if no round finished.

        A stopped or failed run keeps what it had: its history and the model of its last finished round (the
        server loop writes the model only once a round is complete, so a failure inside a round leaves it as is).
        """
        with self._lock:
            finished = self._status in (DONE, STOPPED, FAILED)
            return self._run if finished and self._run is not None and self._run.history else None

    @property
    def model(self) -> nn.Module | None:
        """The global model of the last finished round, once the run is over."""
        run = self.result()
        return run.model if run else None


class JobSlots:
    """Caps on concurrent runs, shared by every browser session of one server: in all, and per owner token.

    It also remembers every job it started by id, so a reloaded page (or a shared link) can find the run.
    """

    def __init__(self, capacity: int = 2, per_owner: int = 1, deadline_seconds: float | None = None) -> None:
        self.capacity = capacity
        self.per_owner = per_owner
        self.deadline_seconds = deadline_seconds  # how long a run may hold a slot (budget.Budget.run_deadline_seconds)
        self._lock = threading.Lock()
        self._running: list[TrainingJob] = []
        self._by_id: dict[str, TrainingJob] = {}

    def find(self, job_id: str) -> TrainingJob | None:
        with self._lock:
            return self._by_id.get(job_id)

    def try_start(self, job: TrainingJob) -> str | None:
        """Start ``job``, or say why not: :data:`BUSY` (every slot taken, see :meth:`wait_estimate`) or
        :data:`OWNER_BUSY` (its owner already runs ``per_owner`` jobs)."""
        with self._lock:
            self._running = [j for j in self._running if not j.snapshot().finished]
            if sum(job.same_owner(j) for j in self._running) >= self.per_owner:
                return OWNER_BUSY
            if len(self._running) >= self.capacity:
                return BUSY
            self._running.append(job)
            self._by_id[job.job_id] = job
            self._forget_oldest_finished()
        job.start(self.deadline_seconds)
        return None

    def _forget_oldest_finished(self, keep: int = 32) -> None:
        finished = [i for i, j in self._by_id.items() if j not in self._running]
        for job_id in finished[: max(0, len(self._by_id) - keep)]:
            del self._by_id[job_id]

    def wait_estimate(self) -> float:
        """Seconds until the soonest running job should finish."""
        with self._lock:
            etas = [s.eta for s in (j.snapshot() for j in self._running) if not s.finished]
        return min((e for e in etas if e is not None), default=0.0)

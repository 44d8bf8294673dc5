"""The data owners' warm workers: at most ``SYFT_CONCURRENT_JOBS`` of them, shared by every owner in this server.

A warm worker (:mod:`fed_core.engines.syft_warm_worker`) holds torch and a first gradient, which costs
about 0.7 GB of memory (torch alone maps 0.5 GB; measured with bench/bench_engines.py). One per owner
would cost 70 GB at 100 owners, so owners borrow from one pool instead: a job takes a worker before syft
runs it and gives it back after, and at most ``size`` jobs hold one at a time. That bound is the one on
how many owners' jobs run at once in the whole server, whatever the number of owners or of runs: a
waiting owner starts no process at all.

The pool is shared by every syft run in the process (:func:`join_shared_pool`, :func:`leave_shared_pool`);
the last run to leave stops its workers, so no process outlives the runs that used it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fed_core.engines.syft_handoff import MessageError, receive_message, send_message
from fed_core.engines.syft_warm_worker import TrainingRequest

SYFT_CONCURRENT_JOBS = 2  # owners' jobs training at once in this server, each in one warm worker
WAIT_SECONDS = 0.25  # how often a waiting owner checks whether its run was stopped


class WarmWorkerError(RuntimeError):
    """A warm worker refused a request, failed to train, or ended."""


class PoolClosed(RuntimeError):
    """The pool closed, or the owner gave up, while it waited for a worker."""


class WarmWorker:
    """The owner's end of one warm worker process: the pipe only this process writes to."""

    def __init__(self, model: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fed_core.engines.syft_warm_worker", model],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ask(self, message: dict) -> dict:
        """Send one request and return the reply; the first call waits for the warm-up to finish."""
        try:
            if not self._ready:
                receive_message(self.process.stdout)
                self._ready = True
            send_message(self.process.stdin, message)
            return receive_message(self.process.stdout)
        except (OSError, EOFError, MessageError) as exc:
            raise WarmWorkerError(f"the warm worker (pid {self.pid}) ended: {exc}") from None

    def train(self, request: TrainingRequest) -> str:
        """Run ``request``; returns the worker's one-line summary or raises WarmWorkerError."""
        reply = self.ask(request.to_message())
        if "error" in reply:
            raise WarmWorkerError(reply["error"])
        return reply["summary"]

    def close(self) -> None:
        """Stop the process now, even mid-training: it holds nothing worth keeping."""
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()


class WarmPool:
    """At most ``size`` warm workers; :meth:`borrow` lends one to one job at a time."""

    def __init__(self, size: int, model: str) -> None:
        self.size = size
        self.model = model  # the one each worker warms up with; other models' first step costs a little more
        self._idle: list[WarmWorker] = []
        self._lent = 0
        self._closed = False
        self._changed = threading.Condition()

    def prestart(self, count: int) -> None:
        """Start workers now, up to ``count`` (and ``size``), so they warm up while the owners publish."""
        with self._changed:
            while not self._closed and len(self._idle) + self._lent < min(count, self.size):
                self._idle.append(WarmWorker(self.model))

    @contextmanager
    def borrow(self, give_up: threading.Event | None = None) -> Iterator[WarmWorker]:
        """A warm worker for one job; waits while ``size`` jobs hold one. Raises PoolClosed if ``give_up`` is set."""
        with self._changed:
            while self._lent >= self.size or self._closed:
                if self._closed or (give_up is not None and give_up.is_set()):
                    raise PoolClosed("the syft run ended while its owner waited for a warm worker")
                self._changed.wait(WAIT_SECONDS)
            self._lent += 1
            worker = self._idle.pop() if self._idle else None
        try:
            if worker is None or not worker.alive:
                worker = WarmWorker(self.model)
            yield worker
        finally:
            with self._changed:
                self._lent -= 1
                keep = worker is not None and worker.alive and not self._closed
                if keep:
                    self._idle.append(worker)
                self._changed.notify()
            if worker is not None and not keep:
                worker.close()

    def close(self) -> None:
        """Stop the idle workers; a lent one stops when it is given back."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for worker in idle:
            worker.close()


_shared_lock = threading.Lock()
_shared: WarmPool | None = None
_users = 0


def join_shared_pool(model: str, owners: int) -> WarmPool:
    """The server's pool, made by the first run that needs one; starts the workers ``owners`` owners can use."""
    global _shared, _users
    with _shared_lock:
        if _shared is None:
            _shared = WarmPool(SYFT_CONCURRENT_JOBS, model)
        _users += 1
        pool = _shared
    pool.prestart(owners)
    return pool


def leave_shared_pool() -> None:
    """A run is done with the pool; the last one to leave stops every warm worker."""
    global _shared, _users
    with _shared_lock:
        _users -= 1
        if _users:
            return
        pool, _shared = _shared, None
    pool.close()

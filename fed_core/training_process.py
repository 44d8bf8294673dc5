"""A federated run of the in-process engine in a child process, watched from the server through a pipe.

Why a process and not a thread: a training thread shares the server's GIL with every visitor's request. Its
Python between torch operations holds the GIL, and at nice 10 on a busy machine the kernel often takes its core
while it holds it: every request thread then waits for a thread that is not running (``python
bench/bench_load.py --trace`` measured a Draw classification of 0.1 s of CPU blocked 4-5 s that way). A child
process has a GIL of its own, and its niceness is the whole process's, so the kernel's priority is the only one.

The child runs exactly what the thread ran (``engine_for(config).run`` on the shipped MNIST) and sends the server
what a page reads: the label histogram once, then each finished round's record, server view and model weights.
The server keeps a mirror :class:`~fed_core.federation.server.FederatedRun` of them, so the job's snapshots,
model and result read the same in either home. Stop goes the other way, as an event the child checks between
batches; the child also stops if the server process is gone.

The child is spawned, not forked: the server has threads (Streamlit's, torch's) and a forked copy of their
locks can deadlock. It pays torch's import once per run (about 2 s, and its own resident memory; measured in
bench/bench_load.py, which prints the server's memory with its children).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines import engine_for
from fed_core.federation.server import FederatedRun, RoundRecord
from fed_core.limits.memory import give_back, release_freed_memory
from fed_core.limits.threads import lower_this_threads_priority
from fed_core.models import new_model
from fed_core.vocabulary import TrainingStopped

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the server checks for a stop while it waits for the child


def run_in_child(
    config: TrainConfig,
    torch_threads: int,
    nice: int,
    on_start: Callable[[FederatedRun], None],
    on_round: Callable[[FederatedRun, RoundRecord], None],
    should_stop: Callable[[], bool],
) -> FederatedRun:
    """Train ``config`` with the in-process engine in a child process; like ``Engine.run``, call back at the
    start and after each round, raise TrainingStopped when stopped and the child's error when it fails."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    stop = context.Event()
    child = context.Process(
        target=_child_main,
        args=(config, sending, stop, torch_threads, nice, os.getpid()),
        name="federated-run",
        daemon=True,  # ends with the server
    )
    child.start()
    sending.close()  # the child holds the only writing end: its exit ends the pipe
    try:
        return _relay(config, receiving, stop, on_start, on_round, should_stop, child)
    finally:
        stop.set()
        receiving.close()
        child.join(30)
        if child.is_alive():
            child.kill()


def _relay(config, receiving: Connection, stop, on_start, on_round, should_stop, child) -> FederatedRun:
    """Mirror the child's run until it ends; pass a stop on to it."""
    run: FederatedRun | None = None
    while True:
        if not stop.is_set() and should_stop():
            stop.set()
        if not receiving.poll(POLL_SECONDS):
            continue
        try:
            kind, *payload = pickle.loads(receiving.recv_bytes())
        except EOFError:
            child.join(5)
            raise RuntimeError(f"The training process ended unexpectedly (exit code {child.exitcode}).") from None
        if kind == "start":
            run = FederatedRun(config, payload[0], model=new_model(config.model, config.init, config.seed))
            on_start(run)
        elif kind == "round":
            record, server_view, weights = payload
            run.model.load_state_dict(weights)
            run.history.append(record)
            run.server_view, run.wall_seconds = server_view, record.elapsed
            on_round(run, record)
        elif payload[0] is not None:
            raise payload[0]
        else:
            return run


def _child_main(config: TrainConfig, conn: Connection, stop, torch_threads: int, nice: int, parent: int) -> None:
    """The child: set up as the training thread would be, run, and report every step through ``conn``."""
    lower_this_threads_priority(nice)  # before torch starts threads: they inherit it, so the whole child is niced
    release_freed_memory()
    torch.set_num_threads(torch_threads)

    def send(*message) -> None:
        conn.send_bytes(pickle.dumps(message))

    def on_round(run: FederatedRun, record: RoundRecord) -> None:
        send("round", record, run.server_view, run.model.state_dict())
        give_back()

    try:
        engine_for(config).run(
            load_mnist(),
            on_start=lambda run: send("start", run.label_histogram),
            on_round=on_round,
            should_stop=lambda: stop.is_set() or os.getppid() != parent,
        )
        send("end", None)
    except Exception as exc:  # TrainingStopped included: the server raises it again
        if not isinstance(exc, TrainingStopped):
            log.exception("federated run failed in its process")
        send("end", _picklable(exc))
    finally:
        conn.close()


def _picklable(exc: Exception) -> Exception:
    """The error itself if it survives the pipe, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(str(exc) or type(exc).__name__)
    return exc

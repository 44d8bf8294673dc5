"""Where a request's time goes inside the Streamlit server: loaded only by bench/bench_load.py --trace.

Python imports ``sitecustomize`` at start-up from the first directory on sys.path that has one; bench_load puts
this directory first on the server's PYTHONPATH and names a log file in FEDMNIST_TRACE. The variable is removed
at once, so the server's child processes (MPC parties, HE workers) start untraced. It writes JSON lines:

- ``backmsg``: the event loop received a rerun request from a browser (its session, and fragment if any);
- ``run``: a script run (or fragment run) started and ended on its thread, with that thread's CPU and run-queue
  wait from /proc (Linux schedstat), so wall = CPU + run-queue wait + time blocked (on the GIL, or I/O);
- ``finished``: the event loop queued a run's script_finished message for the browser;
- ``classify``: fed_core.encrypted.base.Scheme.classify (every scheme's), the same three parts;
- ``tick``: every 0.5 s, how late a 10 ms sleep woke up in a probe thread (the GIL and the run queue), minus its
  own run-queue wait, and each traced thread's CPU in that half-second (training, event loop).
"""

from __future__ import annotations

import json
import os
import threading
import time

PATH = os.environ.pop("FEDMNIST_TRACE", None)
_lock = threading.Lock()


def sched(tid: int | None = None) -> tuple[float, float]:
    """(CPU seconds, run-queue wait seconds) of a thread of this process (default: the calling one)."""
    tid = threading.get_native_id() if tid is None else tid
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            cpu, wait, _ = f.read().split()
    except OSError:
        return float("nan"), float("nan")
    return int(cpu) / 1e9, int(wait) / 1e9


def write(kind: str, **fields) -> None:
    line = json.dumps({"kind": kind, "t": time.time(), **fields})
    with _lock, open(PATH, "a") as f:
        f.write(line + "\n")


def timed(kind: str, **fields):
    """A context manager writing one line with wall, CPU and run-queue wait of the calling thread."""

    class Span:
        def __enter__(self):
            self.t0, (self.cpu0, self.wait0) = time.time(), sched()
            return self

        def __exit__(self, *exc):
            cpu, wait = sched()
            write(kind, t0=self.t0, tid=threading.get_native_id(), cpu=cpu - self.cpu0, rq=wait - self.wait0, **fields)

    return Span()


def patch_streamlit() -> None:
    from streamlit.runtime.app_session import AppSession
    from streamlit.runtime.scriptrunner import ScriptRunnerEvent

    handle_backmsg = AppSession.handle_backmsg
    enqueue = AppSession._enqueue_forward_msg
    on_event = AppSession._on_scriptrunner_event
    started: dict[int, tuple[float, float, float, list]] = {}

    def traced_backmsg(self, msg) -> None:
        if msg.WhichOneof("type") == "rerun_script":
            write("backmsg", sid=self.id, fragment=msg.rerun_script.fragment_id or None)
        handle_backmsg(self, msg)

    def traced_event(self, sender, event, *args, **kwargs) -> None:
        tid = threading.get_native_id()
        if event == ScriptRunnerEvent.SCRIPT_STARTED:
            patch_classify()  # here, not at start-up: the page imports fed_core (and torch) on this thread anyway
            started[tid] = (time.time(), *sched(), kwargs.get("fragment_ids_this_run") or [])
        elif event.name.startswith(("SCRIPT_STOPPED", "FRAGMENT_STOPPED")) and tid in started:
            t0, cpu0, wait0, fragments = started.pop(tid)
            cpu, wait = sched()
            write(
                "run", sid=self.id, tid=tid, t0=t0, cpu=cpu - cpu0, rq=wait - wait0, end=event.name, fragments=fragments
            )
        on_event(self, sender, event, *args, **kwargs)

    def traced_enqueue(self, msg) -> None:
        if msg.WhichOneof("type") == "script_finished":
            write("finished", sid=self.id)
        enqueue(self, msg)

    AppSession.handle_backmsg = traced_backmsg
    AppSession._enqueue_forward_msg = traced_enqueue
    AppSession._on_scriptrunner_event = traced_event


def patch_classify() -> None:
    from fed_core.encrypted.base import Scheme

    if getattr(Scheme.classify, "traced", False):
        return
    classify = Scheme.classify

    def traced(self, model, image28):
        with timed("classify", scheme=self.name):
            return classify(self, model, image28)

    traced.traced = True
    Scheme.classify = traced


def ticks(period: float = 0.5, nap: float = 0.01) -> None:
    """Every ``period``: how late ``nap``-second sleeps woke (mean, max), and CPU of the threads named below."""
    main = threading.main_thread().native_id
    last: dict[int, float] = {}
    while True:
        end, lags, wait0 = time.perf_counter() + period, [], sched()[1]
        while time.perf_counter() < end:
            t = time.perf_counter()
            time.sleep(nap)
            lags.append(time.perf_counter() - t - nap)
        rq = sched()[1] - wait0
        watched = {"loop": main} | {
            t.name: t.native_id for t in threading.enumerate() if t.name.startswith(("federated-run",))
        }
        cpu = {}
        for name, tid in watched.items():
            now = sched(tid)[0]
            cpu[name] = round(now - last.get(tid, now), 4)
            last[tid] = now
        write("tick", lag_mean=sum(lags) / len(lags), lag_max=max(lags), probe_rq=rq / len(lags), cpu=cpu)


if PATH:
    patch_streamlit()
    threading.Thread(target=ticks, name="trace-ticks", daemon=True).start()

"""A visitor's Draw classification while a run trains in the same server process, without browsers.

    python bench/bench_interactive.py [--scenes train idle] [--repeats 2] [--rounds 2] [--requests 10]

Each scene is a fresh process standing for the server. In "train" it starts a default run (the Train page's
settings, fewer rounds) in a thread, as the app does (TrainingJob: one torch thread at nice 10, fed_core/limits/
threads.py) and, while it trains, one visitor thread classifies a test digit again and again, HE and MPC in turn,
each followed by the Python work of showing it (a Plotly figure made and serialised, as Streamlit does with the
page's chart). "idle" makes the same requests with no run. Per scene: the requests' p50 and p95 (wall) and where
their time went (CPU, waiting for a core, blocked: on the GIL held by another thread), the run's seconds per round,
and the process's wall, CPU and peak memory together. Scenes are interleaved, so the machine's load hits each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import plotly.graph_objects as go
import psutil
import torch
from bench_app import tree_rss
from usage import ROOT, Usage

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted import Scheme, scheme_for
from fed_core.engines import engine_for
from fed_core.he.ckks import HeClient, HeServer
from fed_core.job import TrainingJob
from fed_core.limits.memory import release_freed_memory
from fed_core.models import load_model

PRETRAINED = ROOT / "assets" / "pretrained_crypto_cnn.pt"


def thread_sched() -> tuple[float, float]:
    """(CPU, run-queue wait) seconds of the calling thread (Linux schedstat)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        cpu, wait, _ = f.read().split()
    return int(cpu) / 1e9, int(wait) / 1e9


def request(model, digit: torch.Tensor, scheme: Scheme) -> dict:
    """One Classify press: the encrypted classification, then the chart of its probabilities serialised."""
    t0, (cpu0, rq0) = time.perf_counter(), thread_sched()
    result = scheme.classify(model, digit)
    figure = go.Figure(go.Bar(x=list(range(10)), y=result.probabilities))
    figure.to_json()
    wall, (cpu, rq) = time.perf_counter() - t0, thread_sched()
    return {"scheme": scheme.name, "wall": wall, "cpu": cpu - cpu0, "rq": rq - rq0}


def scene(rounds: int, requests: int) -> dict:
    """In this process: a run training in a thread (none if ``rounds`` is 0), and a visitor's requests meanwhile."""
    release_freed_memory()  # as the app's server sets itself up (ui/nav.py)
    torch.set_num_threads(1)
    model, _ = load_model(PRETRAINED)
    test = load_mnist().test_images
    digits = [normalize(test[i : i + 1])[0] for i in range(requests)]
    client = HeClient()
    server = HeServer(model, client.public_context)  # one visitor's keys, made once as the Draw page does
    schemes = (scheme_for("he", keys=lambda _: (client, server)), scheme_for("mpc"))
    job = TrainingJob(engine_for(TrainConfig(rounds=rounds))).start() if rounds else None
    while job and not job.snapshot().history and not job.snapshot().finished:  # requests while rounds run
        time.sleep(0.2)
    rows = []
    for i in range(requests):
        if job and job.snapshot().finished:
            break
        rows.append(request(model, digits[i], schemes[i % 2]))
        time.sleep(0.3)  # a visitor looks at the answer before drawing again
    if job is None:
        return {"rows": rows}
    job.join()
    history = job.snapshot().history
    return {
        "rows": rows,
        "run": f"{job.snapshot().status}, {statistics.mean(r['seconds'] for r in history):.1f} s per round, "
        f"accuracy {history[-1]['test_accuracy']:.2%}",
    }


def run_scene(name: str, rounds: int, requests: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rounds = rounds if name == "train" else 0
    process = subprocess.Popen(
        [sys.executable, __file__, "--scene", str(rounds), str(requests)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    started, peak, done = time.perf_counter(), [0.0], threading.Event()

    def sample() -> None:  # the scene and its training child together, every 50 ms
        while not done.wait(0.05):
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = process.stdout.read()
    _, status, rusage = os.wait4(process.pid, 0)  # CPU of the scene and of the child it joined
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"the {name} scene exited with {os.waitstatus_to_exitcode(status)}")
    usage = Usage(time.perf_counter() - started, rusage.ru_utime, rusage.ru_stime, peak[0])
    found = json.loads(out.strip().splitlines()[-1])
    lines = [f"[{name}] {usage}; load average {os.getloadavg()[0]:.1f}"]
    if "run" in found:
        lines.append(f"    the run: {found['run']}")
    for scheme in ("he", "mpc"):
        rows = [r for r in found["rows"] if r["scheme"] == scheme]
        if not rows:
            continue
        walls = [r["wall"] for r in rows]
        p95 = float(np.percentile(walls, 95))
        parts = {k: statistics.median(r[k] for r in rows) for k in ("cpu", "rq")}
        blocked = statistics.median(r["wall"] - r["cpu"] - r["rq"] for r in rows)
        lines.append(
            f"    {scheme.upper()} request ({len(rows)}): p50 {statistics.median(walls):.2f} s, p95 {p95:.2f} s; "
            f"median CPU {parts['cpu']:.2f} s, waiting for a core {parts['rq']:.2f} s, blocked (GIL) {blocked:.2f} s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["train", "idle"], choices=["train", "idle"])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of scenes, interleaved")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the default run")
    parser.add_argument("--requests", type=int, default=10, help="classifications per scene, HE and MPC in turn")
    parser.add_argument("--scene", nargs=2, type=int, help=argparse.SUPPRESS)  # the child: rounds, requests
    args = parser.parse_args()
    if args.scene:
        print(json.dumps(scene(*args.scene)))
        return
    for _ in range(args.repeats):
        for name in args.scenes:
            print(run_scene(name, args.rounds, args.requests), flush=True)


if __name__ == "__main__":
    main()

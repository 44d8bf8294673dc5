"""Run a federated job across processes with Flower's Deployment Engine, on this machine.

    python scripts/flower_deployment.py --workers 2 --rounds 3 --train-size 6000 --out /tmp/fed-deploy

It does what separate hosts would do (docs/engines.md shows the per-host commands):

1. each worker's data owner writes its shard to a file (here: cut from the shipped MNIST with the
   run's partition);
2. one ``flower-superlink`` and one ``flower-supernode`` per worker start, each SuperNode given its own
   shard file and partition id by ``--node-config``; all listen on 127.0.0.1 only, without TLS
   (``--insecure``);
3. ``flwr run fed_core/flower_app`` submits the job; the ServerApp writes run.json and model.pt to
   the output folder;
4. every process is stopped, whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fed_core import flower_app
from fed_core.config import TrainConfig, validate
from fed_core.data.mnist import load_mnist
from fed_core.engines.flower_engine import shard_file_name
from fed_core.engines.worker_job import save_shard
from fed_core.federation.server import partition_for
from fed_core.flower_app.run_config import OUT_DIR, run_config_of

APP_DIR = Path(flower_app.__file__).parent  # the Flower App `flwr run` builds: its pyproject.toml names the apps
CONNECTION = "fed-mnist-local"
HOST = "127.0.0.1"


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def write_shards(config: TrainConfig, folder: Path) -> list[Path]:
    """Each owner's data file, cut with the partition the server will assume."""
    data = load_mnist()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for worker, shard in enumerate(partition_for(config, data)):
        paths.append(folder / shard_file_name(worker))
        save_shard(paths[-1], data.train_images[shard], data.train_labels[shard])
    return paths


def run_config_overrides(config: TrainConfig, out_dir: Path) -> str:
    """The whole config as `flwr run --run-config` pairs (TOML values), so the deployed run trains as asked."""
    pairs = {**run_config_of(config), OUT_DIR: str(out_dir)}
    return " ".join(f"{key}={json.dumps(value)}" for key, value in pairs.items())


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per shard file, as subprocesses; use it as a context manager."""

    shard_files: list[Path]
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # flower-superlink starts flower-superexec by name
        return {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        }

    def __enter__(self) -> LocalFederation:
        self.write_connection()
        try:
            self.start(
                "superlink",
                [
                    "flower-superlink",
                    "--insecure",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    "--disable-runtime-dependency-installation",
                ],
            )
            wait_for_port(self.port)
            for worker, shard in enumerate(self.shard_files):
                node_config = f'partition-id={worker} shard-file="{shard}"'
                self.start(
                    f"supernode-{worker}",
                    [
                        "flower-supernode",
                        "--insecure",
                        "--superlink",
                        f"{HOST}:{self.port}",
                        "--host",
                        HOST,
                        "--port",
                        str(free_port()),
                        "--node-config",
                        node_config,
                    ],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_connection(self) -> None:
        """The Flower Configuration `flwr run` reads: a SuperLink connection to our local SuperLink."""
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{self.port}"\ninsecure = true\n'
        )

    def start(self, name: str, command: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 (the process owns it)
        # A new session per process, so stop() can signal its whole process group.
        self.processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True
            )
        )
        log.close()

    def run(self, config: TrainConfig, out_dir: Path, timeout: float) -> dict:
        """Submit the job with `flwr run`, wait for it to finish, and return its run.json."""
        command = [
            "flwr",
            "run",
            str(APP_DIR),
            CONNECTION,
            "--run-config",
            run_config_overrides(config, out_dir),
            "--stream",
        ]
        with open(self.workdir / "flwr-run.log", "w") as log:
            subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                timeout=timeout,
                check=True,
            )
        result = out_dir / "run.json"
        deadline = time.monotonic() + 30
        while not result.exists():  # the log stream can end a moment before the ServerApp writes its files
            if time.monotonic() > deadline:
                raise RuntimeError(f"The run ended without writing {result}; see the logs in {self.workdir}.")
            time.sleep(0.2)
        return json.loads(result.read_text())

    def family(self) -> list[int]:
        """Process ids of everything started here: SuperLink, SuperNodes and what they started."""
        pids = []
        for process in self.processes:
            with suppress(psutil.NoSuchProcess):
                pids += [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        return pids

    def stop(self) -> None:
        """Stop every process started here and everything they started (SuperExec, ServerApp, ClientApps)."""
        family = self.family()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in family:
                _signal(pid, sig)
            _, alive = psutil.wait_procs([p for p in map(_process, family) if p is not None], timeout=5)
            family = [p.pid for p in alive]
            if not family:
                break
        for process in self.processes:
            process.wait(timeout=5)
        self.processes.clear()


def _signal(pid: int, sig: int) -> None:
    """Signal ``pid`` and its process group (each started process leads its own), never our own group."""
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():
            os.killpg(group, sig)
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with closing(socket.socket()) as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"The SuperLink did not open port {port} within {timeout:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for shards, logs, run.json and model.pt")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    config = validate(
        TrainConfig(
            workers=args.workers, rounds=args.rounds, train_size=args.train_size, seed=args.seed, engine="flower"
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    shards = write_shards(config, args.out / "shards")
    started = time.perf_counter()
    with LocalFederation(shards, args.out) as federation:
        run = federation.run(config, args.out / "result", args.timeout)
    for record in run["rounds"]:
        print(f"round {record['round']}: test accuracy {record['test_accuracy']:.2%} ({record['seconds']:.1f} s)")
    print(
        f"{config.workers} SuperNodes x {config.rounds} rounds in {time.perf_counter() - started:.1f} s; "
        f"model and metrics in {args.out / 'result'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

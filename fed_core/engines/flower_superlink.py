"""A Flower SuperLink of our own on this machine, and ``flwr run`` to submit the project's Flower App to it.

Flower's supported way to run an App (``run_simulation`` is deprecated since flwr 1.42) is ``flwr run`` against
a SuperLink: in simulation mode (``--simulation``) the SuperLink's SuperExec starts ``flwr-simulation``, which
runs the ServerApp and the virtual SuperNodes (Ray); in deployment mode real ``flower-supernode`` processes
connect to it. Both the flower engine (simulation) and ``scripts/flower_deployment.py`` (deployment) start one
:class:`LocalSuperLink` per run rather than ``flwr``'s managed local SuperLink, which listens on fixed ports
and outlives the run:

- it listens on 127.0.0.1 only, on a free port, with its own Flower home in the run's private folder;
- every process it starts (SuperExec, ``flwr-simulation``, Ray, SuperNodes) inherits ``env``, which is how
  the Ray switches of ``ray_guard.py`` reach Ray;
- :meth:`LocalSuperLink.stop` ends all of them, whatever happened.

Its Control API has no authentication in Flower's open-source distribution (account login needs the
enterprise OIDC plugin): a process of another account on this machine that finds the port could submit a run
to it. :meth:`LocalSuperLink.simulations` lets the engine notice one (each run gets its own
``flwr-simulation`` process) and stop everything.
"""

from __future__ import annotations

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

import fed_core

APP_DIR = Path(fed_core.__file__).parent / "flower_app"  # the Flower App `flwr run` builds (its pyproject.toml)
CONNECTION = "fed-mnist-local"
HOST = "127.0.0.1"
START_SECONDS = 60.0
SIMULATION_PROCESS = "flwr-simulation"  # the command SuperExec starts for each run of a simulation SuperLink


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def toml_pairs(values: dict) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` and ``--federation-config`` read them (TOML values)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


@dataclass
class LocalSuperLink:
    """A SuperLink on loopback (``simulation``: with Flower's Simulation Runtime) and what it starts; a context
    manager that stops them all on exit."""

    workdir: Path
    simulation: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # flower-superlink starts flower-superexec by name
        return {
            **os.environ,
            **self.extra_env,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        }

    def __enter__(self) -> LocalSuperLink:
        self.write_connection()
        try:
            command = ["flower-superlink", "--insecure", "--host", HOST, "--port", str(self.port)]
            if self.simulation:
                command.append("--simulation")
            superlink = self.start("superlink", [*command, "--disable-runtime-dependency-installation"])
            wait_for_port(self.port, superlink)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_connection(self) -> None:
        """The Flower Configuration `flwr run` reads: a SuperLink connection to this SuperLink."""
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{self.port}"\ninsecure = true\n'
        )

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        """Start ``command`` with this SuperLink's environment, its output in ``<workdir>/<name>.log``."""
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 (the process owns it)
        # A new session per process, so stop() can signal its whole process group.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def submit(self, run_config: dict, federation_config: dict | None = None, timeout: float = 120.0) -> int:
        """Submit the Flower App with ``flwr run``; returns the run id at once (the run goes on in the SuperLink)."""
        command = ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", toml_pairs(run_config), "--format", "json"]
        if federation_config:
            command += ["--federation-config", toml_pairs(federation_config)]
        done = subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=self.workdir, timeout=timeout, check=False
        )
        (self.workdir / "flwr-run.log").write_text(done.stdout + done.stderr)
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"`flwr run` did not start the run: {(done.stdout + done.stderr)[-2000:]}") from None

    def family(self) -> list[psutil.Process]:
        """Everything started here: SuperLink, SuperNodes and what they started (SuperExec, simulations, Ray)."""
        found = []
        for process in self.processes:
            with suppress(psutil.NoSuchProcess):
                parent = psutil.Process(process.pid)
                found += [parent, *parent.children(recursive=True)]
        return found

    def simulations(self) -> list[psutil.Process]:
        """The ``flwr-simulation`` processes SuperExec started: one per run the SuperLink is executing (not
        counting their own forks)."""
        running = {}
        for process in self.family():
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if any(Path(part).name == SIMULATION_PROCESS for part in process.cmdline()[:2]):
                    running[process.pid] = process
        with suppress(psutil.NoSuchProcess):
            return [p for p in running.values() if p.ppid() not in running]
        return []

    def stop(self) -> None:
        """Stop every process started here and everything they started."""
        family = [p.pid for p in self.family()]
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


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = START_SECONDS) -> None:
    """Wait until something listens on ``HOST:port``; fails early if ``process`` (the SuperLink) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The SuperLink exited with code {process.returncode} before opening port {port}.")
        with closing(socket.socket()) as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"The SuperLink did not open port {port} within {timeout:.0f} s.")

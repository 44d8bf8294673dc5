"""The processes of a Flower simulation: a stranger can drive neither its Ray cluster nor its SuperLink.

The attack on Ray (issue 16, item 2): while a simulation runs, a separate process with none of the run's secrets
connects to the GCS as a driver and runs a shell command as the app's user. Against a cluster started as the
engine used to start it, the command runs (the control); against a simulation now, every server of the run
(SuperLink, SuperExec, flwr-simulation, Ray) listens on loopback only and the GCS refuses the connection for
want of the run's token, which only the run's own processes hold.

The attack on the SuperLink (new with ``flwr run``): its Control API has no authentication in Flower's
open-source distribution, so a stranger on this machine who finds its port submits an App of its own, whose
ServerApp would run as the app's user. The SuperLink accepts the run; the engine sees a second
``flwr-simulation`` and stops everything before that ServerApp runs.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from fed_core.config import TrainConfig
from fed_core.engines import engine_for, flower_engine
from fed_core.engines.flower_engine import FlowerClientError, federation_config
from fed_core.engines.flower_superlink import HOST, LocalSuperLink
from fed_core.engines.ray_guard import TOKEN_VARIABLE, ray_environment

INTRUDER = Path(__file__).with_name("ray_intruder.py")
REFUSAL = "Unauthenticated"  # what Ray's client logs each time the GCS turns it away
WAIT_SECONDS = 90.0
GCS_ARGUMENT = "--gcs-address="  # how Ray tells its raylet and workers where the GCS listens
STRANGER_APP = """
import pathlib
from flwr.serverapp import ServerApp
from flwr.clientapp import ClientApp

app = ServerApp()
client = ClientApp()


@app.main()
def main(grid, context):
    pathlib.Path({marker!r}).write_text("the stranger's ServerApp ran")
"""
STRANGER_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "stranger"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "stranger"

[tool.flwr.app.components]
serverapp = "stranger_app:app"
clientapp = "stranger_app:client"

[tool.flwr.app.config]
"""


def stranger_environment() -> dict[str, str]:
    """This machine's environment without any of Ray's settings (so without the run's token) or the project.

    The stranger keeps the address it is given as it is (Ray would otherwise swap 127.0.0.1 for the host's
    outward address): a local attacker who knows the trick.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FLWR_")) and k != "PYTHONPATH"}
    return {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def intrude(address: str, marker: Path) -> list[str]:
    """Run the intruder against ``address`` until it runs its command, is refused, or gives up; its output."""
    intruder = subprocess.Popen(
        [sys.executable, str(INTRUDER), address, str(marker)],
        env=stranger_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        for line in intruder.stdout:
            lines.append(line)
            if REFUSAL in line or line.startswith("RAN") or time.monotonic() > deadline:
                break
    finally:
        intruder.kill()
        intruder.wait()
    return lines


def submit_stranger_app(port: int, folder: Path, marker: Path) -> dict:
    """A stranger's ``flwr run`` of its own App against the SuperLink on ``port``; the CLI's JSON answer."""
    app = folder / "stranger"
    app.mkdir()
    (app / "stranger_app.py").write_text(STRANGER_APP.format(marker=str(marker)))
    (app / "pyproject.toml").write_text(STRANGER_PYPROJECT)
    home = folder / "stranger-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "theirs"\n\n[superlink.theirs]\naddress = "{HOST}:{port}"\ninsecure = true\n'
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("flwr")), "run", str(app), "theirs", "--format", "json"],
        env={**stranger_environment(), "FLWR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    return json.loads(done.stdout)


def listening_addresses(processes: list[psutil.Process]) -> set[str]:
    """The IP addresses that ``processes`` listen on."""
    found = set()
    for p in processes:
        try:
            found |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return found


def gcs_address(processes: list[psutil.Process]) -> str | None:
    """The address of the Ray GCS that ``processes`` belong to, from a raylet's command line."""
    for p in processes:
        with suppress(psutil.NoSuchProcess):
            for part in p.cmdline():
                if part.startswith(GCS_ARGUMENT):
                    return part.removeprefix(GCS_ARGUMENT)
    return None


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or (
        address.version == 6 and address.ipv4_mapped is not None and address.ipv4_mapped.is_loopback
    )


class RecordingSuperLink(LocalSuperLink):
    started: ClassVar[list[LocalSuperLink]] = []

    def __enter__(self) -> LocalSuperLink:
        RecordingSuperLink.started.append(self)
        return super().__enter__()


def test_a_stranger_can_neither_join_a_running_simulations_ray_cluster_nor_run_an_app_on_its_superlink(
    mnist, tmp_path, monkeypatch
):
    monkeypatch.setattr(flower_engine, "LocalSuperLink", RecordingSuperLink)
    seen = {}

    def on_round(run, record) -> None:  # in the app's process, while the simulation goes on
        if record.round > 1:
            return
        link = RecordingSuperLink.started[-1]
        deadline = time.monotonic() + WAIT_SECONDS
        while gcs_address(link.family()) is None:
            assert time.monotonic() < deadline, "no Ray GCS came up"
            time.sleep(0.2)
        family = link.family()
        (simulation,) = link.simulations()
        seen["token"] = simulation.environ().get(TOKEN_VARIABLE)
        seen["listening"] = listening_addresses(family)
        commands = [" ".join(p.cmdline()) for p in family]
        seen["dashboard"] = [c for c in commands if "dashboard/dashboard.py" in c]
        seen["address"] = gcs_address(family)
        seen["intruder"] = intrude(seen["address"], tmp_path / "pwned")
        seen["stranger's run"] = submit_stranger_app(link.port, tmp_path, tmp_path / "stranger-ran")

    config = TrainConfig(engine="flower", workers=2, rounds=40, train_size=2000, contribution_subset=0)
    with pytest.raises(FlowerClientError, match="Another run was submitted to this run's Flower SuperLink"):
        engine_for(config).run(mnist, on_round=on_round)

    assert seen["token"] and len(seen["token"]) == 64 and TOKEN_VARIABLE not in os.environ  # only the run has it
    assert seen["listening"] and all(map(is_loopback, seen["listening"])), seen["listening"]
    # Flower starts Ray without its dashboard: only Ray's minimal head (usage statistics), no web frontend.
    assert all("--minimal" in c and "--disable-frontend" in c for c in seen["dashboard"]), seen["dashboard"]
    assert not (tmp_path / "pwned").exists(), "the stranger ran a command on the cluster"
    assert not any(line.startswith("JOINED") for line in seen["intruder"])
    assert any(REFUSAL in line for line in seen["intruder"]), "".join(seen["intruder"][-5:])
    assert seen["stranger's run"]["success"], "the SuperLink's Control API accepts any local caller"
    time.sleep(5)  # had its flwr-simulation survived, its ServerApp would have written the marker by now
    assert not (tmp_path / "stranger-ran").exists(), "the stranger's ServerApp ran"
    assert not any(p.is_running() for p in RecordingSuperLink.started[-1].family())


def test_each_run_gets_its_own_token():
    tokens = {ray_environment()[TOKEN_VARIABLE] for _ in range(2)}
    assert len(tokens) == 2 and all(len(t) == 64 for t in tokens)


CONTROL = """
import json, sys, ray
init = json.loads(sys.argv[1])  # the engine's Ray settings, as Flower's Ray backend passes them to ray.init
context = ray.init(num_cpus=init["init-args-num-cpus"], num_gpus=init["init-args-num-gpus"],
                   logging_level=init["init-args-logging-level"], log_to_driver=False, include_dashboard=False)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
"""


def test_control_the_same_stranger_runs_its_command_on_a_cluster_started_without_the_guard(tmp_path):
    """The old way: ray.init with the engine's settings and nothing else (here in a process of its own)."""
    env = {k: v for k, v in stranger_environment().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    cluster = subprocess.Popen(
        [sys.executable, "-c", CONTROL, json.dumps(federation_config(1))],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = cluster.stdout.readline().strip()
        listening = listening_addresses([psutil.Process(cluster.pid), *psutil.Process(cluster.pid).children(True)])
        lines = intrude(address, tmp_path / "pwned")
    finally:
        cluster.communicate("", timeout=WAIT_SECONDS)  # closing stdin ends the driver, and its cluster
    assert not address.startswith("127.")
    assert not all(map(is_loopback, listening))
    assert (tmp_path / "pwned").exists(), "".join(lines[-5:])

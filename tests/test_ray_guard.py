"""The Ray cluster of a Flower simulation: a stranger who knows its GCS address can no longer run commands on it.

The attack (issue 16, item 2): while a simulation runs, a separate process with none of the run's secrets
connects to the GCS as a driver and runs a shell command as the app's user. Against a cluster started as the
engine used to start it, the command runs (the control); against a simulation now, every Ray server listens on
loopback only and the GCS refuses the connection for want of the run's token.
"""

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fed_core.engines.flower_engine import simulate, simulation_backend
from fed_core.engines.ray_guard import TOKEN_VARIABLE, RayNotLockedDown, check_switches

INTRUDER = Path(__file__).with_name("ray_intruder.py")
REFUSAL = "Unauthenticated"  # what Ray's client logs each time the GCS turns it away
WAIT_SECONDS = 90.0


def stranger_environment() -> dict[str, str]:
    """This machine's environment without any of Ray's settings, so without the run's token.

    The stranger keeps the address it is given as it is (Ray would otherwise swap 127.0.0.1 for the host's
    outward address): a local attacker who knows the trick.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
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


def listening_addresses(process: psutil.Process) -> set[str]:
    """The IP addresses that ``process`` and its descendants (Ray's GCS, raylets and workers) listen on."""
    found = set()
    for p in [process, *process.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or (
        address.version == 6 and address.ipv4_mapped is not None and address.ipv4_mapped.is_loopback
    )


def test_a_stranger_cannot_run_a_command_on_a_running_simulations_ray_cluster(tmp_path):
    seen = {}

    def serve(grid, shard_dir) -> None:  # the ServerApp's main: the cluster is up while it runs
        import ray

        deadline = time.monotonic() + WAIT_SECONDS
        while not ray.is_initialized() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["token"] = os.environ.get(TOKEN_VARIABLE)
        seen["address"] = ray.get_runtime_context().gcs_address
        seen["own task"] = ray.get(ray.remote(lambda: "ran")._remote(num_cpus=0))  # the run's driver gets in
        seen["listening"] = listening_addresses(psutil.Process())
        seen["intruder"] = intrude(seen["address"], tmp_path / "pwned")

    simulate(1, serve)

    assert seen["own task"] == "ran"
    assert seen["token"] and len(seen["token"]) == 64
    assert seen["address"].startswith("127.0.0.1:")
    assert seen["listening"] and all(map(is_loopback, seen["listening"])), seen["listening"]
    assert not (tmp_path / "pwned").exists(), "the stranger ran a command on the cluster"
    assert not any(line.startswith("JOINED") for line in seen["intruder"])
    assert any(REFUSAL in line for line in seen["intruder"]), "".join(seen["intruder"][-5:])
    assert TOKEN_VARIABLE not in os.environ  # the token ends with its run


def test_each_simulation_gets_its_own_token():
    tokens = []
    for _ in range(2):
        simulate(1, lambda grid, shard_dir: tokens.append(os.environ[TOKEN_VARIABLE]))
    assert len(set(tokens)) == 2


CONTROL = """
import sys, ray
from fed_core.engines.flower_engine import simulation_backend
context = ray.init(**simulation_backend()["init_args"])
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
"""


def test_control_the_same_stranger_runs_its_command_on_a_cluster_started_without_the_guard(tmp_path):
    """The old way: ray.init with the engine's settings and nothing else (here in a process of its own)."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in stranger_environment().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    cluster = subprocess.Popen(
        [sys.executable, "-c", CONTROL],
        env={**env, "PYTHONPATH": str(root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = cluster.stdout.readline().strip()
        listening = listening_addresses(psutil.Process(cluster.pid))
        lines = intrude(address, tmp_path / "pwned")
    finally:
        cluster.communicate("", timeout=WAIT_SECONDS)  # closing stdin ends the driver, and its cluster
    assert not address.startswith("127.")
    assert not all(map(is_loopback, listening))
    assert (tmp_path / "pwned").exists(), "".join(lines[-5:])


def test_a_simulation_is_refused_if_ray_was_loaded_without_the_guard():
    """In a fresh process that imports Ray first, the check fails closed instead of running an open cluster."""
    code = "import ray\nfrom fed_core.engines.ray_guard import check_switches\ncheck_switches()"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and RayNotLockedDown.__name__ in done.stderr


def test_the_engines_ray_settings_start_no_dashboard():
    assert simulation_backend()["init_args"]["include_dashboard"] is False
    check_switches()  # this process ran its simulations through the guard

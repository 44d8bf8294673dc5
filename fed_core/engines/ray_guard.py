"""The Ray cluster behind Flower's Simulation Runtime, closed to everyone but the run's own processes.

``ray.init`` starts a GCS, raylets and worker processes that, by default, listen on every interface with no
authentication: anyone who can reach the host and guess the GCS port can join as a driver and run any
command as the app's user. Flower's ``flwr-simulation`` starts that cluster for every simulated run, so the
flower engine hands the SuperLink (and through it SuperExec, ``flwr-simulation`` and Ray) the environment of
:func:`ray_environment`, which turns on two of Ray's own defences, each enough on its own against a remote
caller:

- Token authentication (``RAY_AUTH_MODE=token``): every Ray RPC must carry a bearer token. A fresh one
  (``secrets.token_hex``, 256 bits) is made for each run and exists only in the environment of that run's
  processes (never in the app's own), so a token seen once is useless for the next run.
- Loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): Ray then treats this machine as a one-node
  cluster, as it does on macOS and Windows, and every server it starts binds 127.0.0.1 instead of ``*``.
  (``ray.init(_node_ip_address="127.0.0.1")`` does not do this: Ray replaces a loopback address with the
  host's outward-facing one.)

Ray reads both switches once per process, when it is first imported; ``flwr-simulation`` has them from its
start, so they are in force before anything there imports Ray. tests/test_ray_guard.py mounts the attack on
a running simulation.
"""

from __future__ import annotations

import secrets

AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a one-node cluster bound to loopback
TOKEN_BYTES = 32


def ray_environment() -> dict[str, str]:
    """The environment variables that make one run's Ray require a fresh token and listen on loopback only."""
    return {AUTH_MODE_VARIABLE: "token", TOKEN_VARIABLE: secrets.token_hex(TOKEN_BYTES), CLUSTER_VARIABLE: "0"}

"""The Ray cluster behind Flower's Simulation Engine, closed to everyone but this process.

``ray.init`` starts a GCS, raylets and worker processes that, by default, listen on every interface with no
authentication: anyone who can reach the host and guess the GCS port can join as a driver and run any
command as the app's user. Every simulation therefore runs inside :func:`locked_down_ray`, which turns on
two of Ray's own defences, each enough on its own against a remote caller:

- Token authentication (``RAY_AUTH_MODE=token``): every Ray RPC must carry a bearer token. A fresh one
  (``secrets.token_hex``, 256 bits) is made for each simulation and handed to Ray's processes through the
  environment they inherit, so a token seen once is useless for the next run.
- Loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): Ray then treats this machine as a one-node
  cluster, as it does on macOS and Windows, and every server it starts binds 127.0.0.1 instead of ``*``.
  (``ray.init(_node_ip_address="127.0.0.1")`` does not do this: Ray replaces a loopback address with the
  host's outward-facing one.)

Ray reads both switches once per process, when it is first imported, so they are set before the import and
checked after it: if Ray was loaded earlier without them, the simulation is refused rather than run open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from fed_core.engines import EngineError

AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a one-node cluster bound to loopback
TOKEN_BYTES = 32


class RayNotLockedDown(EngineError):
    """Ray was loaded in this process before its authentication and loopback switches could be set."""


def set_switches() -> None:
    """Ask Ray for token authentication and loopback-only servers; effective only before Ray is imported."""
    os.environ[AUTH_MODE_VARIABLE] = "token"
    os.environ[CLUSTER_VARIABLE] = "0"


def check_switches() -> None:
    """Raise :class:`RayNotLockedDown` unless this process's Ray requires tokens and stays on loopback."""
    # Private modules: Ray exposes these two settings no other way. The test that mounts the attack
    # (tests/test_ray_guard.py) notices if a Ray upgrade moves them.
    from ray._private import ray_constants
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled() or ray_constants.ENABLE_RAY_CLUSTER:
        raise RayNotLockedDown(
            "Ray was loaded in this process before token authentication and loopback-only binding could be "
            f"turned on; the Flower simulation was not started. Set {AUTH_MODE_VARIABLE}=token and "
            f"{CLUSTER_VARIABLE}=0 before anything imports Ray."
        )


@contextmanager
def locked_down_ray() -> Iterator[str]:
    """Around one simulation: Ray with token authentication and loopback-only servers, and a fresh token.

    Yields the token (the tests use it to show that the run's own driver gets in). Simulations take turns
    (flower_engine's slot), so one token in the environment at a time is enough; it leaves the environment
    when the simulation ends, and Ray's processes, which inherited it, end with the simulation.
    """
    set_switches()
    check_switches()
    from ray._raylet import AuthenticationTokenLoader  # the driver's cached token, reloaded for the new one

    token = secrets.token_hex(TOKEN_BYTES)
    os.environ[TOKEN_VARIABLE] = token
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield token
    finally:
        os.environ.pop(TOKEN_VARIABLE, None)
        AuthenticationTokenLoader.instance().reset_cache()

"""The approved syft job's whole program: hand the job's folder to its owner, wait, report.

The owner's policy approves only the script of :func:`fed_core.engines.syft_engine.job_script`, which runs
this file as ``python -I -S .../syft_handoff.py`` in the job's code folder. It imports only the standard
library (``-S`` skips site-packages; it is run as a file, not with ``-m``, so fed_core's packages, which
import torch, are never imported), so a job starts in a few tens of milliseconds instead of the ~4 s a
Python process pays to import torch and take its first gradient.

It sends the code folder's path to its owner over the owner's socket, ``SOCKET_NAME`` in the owner's
SyftBox folder (syft's job runner names that folder in ``SYFTBOX_FOLDER``). The owner checks that the
folder is a job it approved and unchanged since, and has its warm worker train fed_core's fixed training
function on its private shard; the update lands in ``outputs/`` where syft collects it. The job prints
the owner's one-line summary, or the owner's refusal on stderr and exits 1, so syft marks it failed.

The same module holds the messages' framing, shared with the owner's side: one JSON object per line.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

SOCKET_NAME = ".fed-warm-worker.sock"
MAX_LINE = 1 << 20  # no message of this protocol comes near a megabyte


class MessageError(RuntimeError):
    """A message broke the protocol: not one JSON object on one line, or too long."""


def owner_socket(syftbox_folder: str | Path) -> Path:
    """Where the owner of ``syftbox_folder`` listens for its approved jobs."""
    return Path(syftbox_folder) / SOCKET_NAME


def send_message(stream, message: dict) -> None:
    """Write ``message`` as one JSON line on a binary file-like ``stream``."""
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def receive_message(stream) -> dict:
    """Read one JSON object line from a binary ``stream``; EOFError at its end, MessageError on anything else."""
    line = stream.readline(MAX_LINE + 1)
    if not line:
        raise EOFError("the other side closed the connection")
    if not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise MessageError("a message must be one line of at most a megabyte")
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MessageError("a message must be a JSON object")
    return message


def main() -> int:
    folder = os.environ.get("SYFTBOX_FOLDER")
    if not folder or os.environ.get("SYFT_IS_IN_JOB") != "true":
        print("This is a syft job: run it through the owner's job runner.", file=sys.stderr)
        return 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(owner_socket(folder)))
        with sock.makefile("rwb") as stream:
            send_message(stream, {"code_dir": os.getcwd()})
            reply = receive_message(stream)
    if "error" in reply:
        print(f"The owner refused or could not train: {reply['error']}", file=sys.stderr)
        return 1
    print(reply["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

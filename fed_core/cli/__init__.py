"""Command line: ``python -m fed_core train|encrypted-eval|classify|attack ...`` does what the pages do.

Each subcommand lives in its own module with a ``register(subparsers)``. Bad input ends with one line on
stderr and exit code 2, never a traceback; progress goes to stderr as tqdm bars.
"""

from __future__ import annotations

import argparse
import sys

from fed_core.cli import attack, encrypted, train
from fed_core.cli.common import USAGE_ERROR, USER_ERRORS
from fed_core.limits.memory import release_freed_memory

COMMANDS = (train, encrypted, attack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fed_core", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(required=True, metavar="command")
    for command in COMMANDS:
        command.register(subparsers)
    args = parser.parse_args(argv)
    release_freed_memory()
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR

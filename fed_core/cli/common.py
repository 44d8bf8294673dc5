"""What every subcommand shares: which errors are the user's to fix, progress bars, output paths."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from fed_core.vocabulary import UserError

USAGE_ERROR = 2
# What a user can cause and fix: every fed_core UserError (bad settings, files or drawings, a diverged run, a
# worker its engine could not reach), and the ValueError or OSError a library raises on a bad file or path.
USER_ERRORS = (UserError, ValueError, OSError)


class FractionBar:
    """A tqdm bar on stderr fed with the fraction of the work done (what fed_core's progress callbacks report)."""

    def __init__(self, label: str) -> None:
        self.bar = tqdm(total=100, desc=label, unit="%", file=sys.stderr)

    def __call__(self, fraction: float) -> None:
        self.bar.update(round(100 * fraction) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def check_writable(flag: str, path: Path | None) -> None:
    """Refuse an output path before the work rather than lose the work at its end."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name.")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {path.parent} does not exist.")
    probe = path.parent / f".fed_core-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {path.parent} ({exc.strerror}).") from exc


def positive_int(text: str) -> int:
    """argparse type for counts: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

"""The server gives freed tensor memory back to the system (glibc's thresholds fixed, see fed_core/memory.py)."""

import platform

import pytest

from fed_core.memory import release_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_glibc_thresholds_are_set():
    assert release_freed_memory() is True

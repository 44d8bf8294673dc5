"""The allocator setting (fed_core/limits/memory.py): hot loops reuse their memory instead of page-faulting it afresh,
and the memory a finished piece of work freed goes back to the system. Each case runs in a fresh process:
mallopt's settings are process-wide."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from fed_core.limits.memory import CHOSEN, ENV, allocator_setting, release_freed_memory

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")

# A hot loop of 4 MB temporaries (a training step's size), then 200 MB of 2 MB blocks of which half are freed.
PROBE = """
import json, resource, psutil, torch
from fed_core.limits.memory import give_back, release_freed_memory
assert release_freed_memory()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    torch.ones(1 << 20).sum()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
blocks = [torch.ones(1 << 19) for _ in range(100)]
del blocks[::2]
rss = psutil.Process().memory_info().rss
give_back()
print(json.dumps({"faults": faults, "given_back": rss - psutil.Process().memory_info().rss}))
"""


def probe(setting: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, ENV: setting, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_hot_loops_reuse_memory_where_the_old_1mb_threshold_faulted_every_page():
    chosen, old = probe(CHOSEN), probe("mmap-1mb")
    pages = 200 * (4 << 20) // 4096  # what mapping every temporary afresh costs: one fault per page
    assert old["faults"] > pages / 2  # the control: the first answer's cost
    assert chosen["faults"] < pages / 20


def test_freed_memory_goes_back_after_the_work():
    assert probe(CHOSEN)["given_back"] > 50e6  # of the 100 MB freed in the middle of the heap
    assert probe("glibc")["given_back"] < 10e6  # glibc alone keeps it


def test_the_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert allocator_setting() == CHOSEN
    monkeypatch.setenv(ENV, "glibc")
    assert allocator_setting() == "glibc" and release_freed_memory() is True
    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(ValueError, match="FEDMNIST_ALLOCATOR must be one of glibc, mmap-1mb, trim"):
        allocator_setting()

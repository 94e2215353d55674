"""fashion_workers on real processes: a parent with one child that spins and one that
sleeps, as a TorchServe frontend has busy and idle workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

import fashion_workers
from fashion_workers import SiblingWorkers

FAMILY = """
import subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(sleeper.pid, spinner.pid, flush=True)
time.sleep(120)
"""


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def family():
    parent = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True)
    sleeper, spinner = (int(pid) for pid in parent.stdout.readline().split())
    yield parent.pid, sleeper, spinner
    for pid in (sleeper, spinner, parent.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    parent.wait()


def test_a_spinning_sibling_is_running_and_a_sleeping_one_is_not(family):
    parent, sleeper, spinner = family
    siblings = SiblingWorkers(parent)
    assert siblings.parent == parent
    # The spinner is on a core or waiting for one at every look.
    assert all(siblings.any_running() for _ in range(20))
    assert sorted(siblings.pids) == sorted([sleeper, spinner])
    os.kill(spinner, signal.SIGKILL)  # a zombie now: its parent does not reap it
    # Once the sleeper has started and sleeps, no sibling runs.
    assert wait_for(lambda: not siblings.any_running())


def test_by_default_the_siblings_are_the_parents_other_children():
    assert SiblingWorkers().parent == os.getppid()


def test_without_proc_the_siblings_count_as_running(monkeypatch, tmp_path):
    """Nothing is split where the siblings cannot be seen."""
    monkeypatch.setattr(fashion_workers, "PROC", tmp_path / "no-proc")
    assert SiblingWorkers(os.getpid()).any_running()

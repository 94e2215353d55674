"""fashion_serve.workers on real processes: a parent with one child that spins and one that
sleeps, as a TorchServe frontend has busy and idle workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fashion_serve import workers
from fashion_serve.workers import SiblingWorkers

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
    assert wait_for(siblings.any_running)  # the children have started
    # The spinner is on a core or waiting for one at every look.
    assert all(siblings.any_running() for _ in range(20))
    assert sorted(siblings.pids) == sorted([sleeper, spinner])
    os.kill(spinner, signal.SIGKILL)  # a zombie now: its parent does not reap it
    # Once the sleeper has started and sleeps, no sibling runs.
    assert wait_for(lambda: not siblings.any_running())


def fake_process(proc, pid: int, name: str, parent: int, states: list[str]) -> None:
    """A /proc/<pid> with its stat line and a task a state (the first is the process's)."""

    def stat(state: str) -> str:
        return f"{pid} ({name}) {state} {parent} {pid} 0 -1 4194560 0 0 0 0 1 2"

    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(stat(states[0]))
    for tid, state in enumerate(states, start=pid):
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True)
        (proc / str(pid) / "task" / str(tid) / "stat").write_text(stat(state))


def test_the_siblings_by_their_stat_lines(monkeypatch, tmp_path):
    """Command names with parentheses and spaces, this process itself, a stranger, a thread
    other than the first that runs, and a sibling that starts later (seen at the refresh).
    The fake pids are above Linux's largest (2**22), so none is this process's."""
    monkeypatch.setattr(workers, "PROC", tmp_path)
    frontend, worker, stranger, late = 5_000_050, 5_000_061, 5_000_070, 5_000_080
    (tmp_path / "self").mkdir()  # not a pid
    fake_process(tmp_path, frontend, "java", 1, ["S"])
    fake_process(tmp_path, worker, "python (worker) 1", frontend, ["S", "S"])
    fake_process(tmp_path, os.getpid(), "python", frontend, ["R"])  # never its own sibling
    fake_process(tmp_path, stranger, f"busy) R {frontend} (stranger", 1, ["R"])
    siblings = SiblingWorkers(parent=frontend)
    assert not siblings.any_running() and siblings.pids == [worker]
    second_thread = tmp_path / str(worker) / "task" / str(worker + 1) / "stat"
    second_thread.write_text(f"{worker + 1} (python) R {frontend} {worker}")
    assert siblings.any_running()
    shutil.rmtree(tmp_path / str(worker))  # gone: not running
    fake_process(tmp_path, late, "python", frontend, ["R"])
    assert not siblings.any_running()  # not known before the refresh
    monkeypatch.setattr(workers, "REFRESH_S", 0.0)
    assert siblings.any_running() and siblings.pids == [late]


def test_without_proc_the_siblings_count_as_running(monkeypatch, tmp_path):
    """Nothing is split where the siblings cannot be seen."""
    monkeypatch.setattr(workers, "PROC", tmp_path / "no-proc")
    assert SiblingWorkers(os.getpid()).any_running()


def test_an_unreadable_stat_line_is_no_sibling(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "PROC", tmp_path)
    (tmp_path / "5000001").mkdir()
    (tmp_path / "5000001" / "stat").write_text("")  # read as the process vanished
    siblings = SiblingWorkers(parent=1)
    assert not siblings.any_running() and siblings.pids == []


def fake_cgroup(tmp_path, cgroup_lines: str, files: dict[str, str]):
    """A /proc/self/cgroup and a /sys/fs/cgroup tree: (proc, root)."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup_lines)
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return tmp_path / "proc", root


@pytest.mark.parametrize(
    ("cgroup_lines", "files", "quota"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # a container's 1.5 CPUs
        ("0::/kubepods/pod1/c1\n",  # a pod's limit above the container's own
         {"kubepods/pod1/cpu.max": "100000 100000", "kubepods/pod1/c1/cpu.max": "max 100000"},
         1.0),
        ("0::/host/path/not/mounted\n", {"cpu.max": "200000 100000"}, 2.0),
        ("12:cpu,cpuacct:/docker/abc\n",  # v1
         {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
          "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 0.5),
        ("12:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),
        ("0::/\n", {}, None),  # no cpu controller files
    ],
    ids=["v2-max", "v2-1.5", "v2-ancestor", "v2-host-path", "v1-0.5", "v1-none", "none"],
)  # fmt: skip
def test_the_cgroup_cpu_quota_is_found(tmp_path, cgroup_lines, files, quota):
    proc, root = fake_cgroup(tmp_path, cgroup_lines, files)
    assert workers.cgroup_cpu_quota(proc, root) == quota


def test_usable_cores_never_exceed_the_quota_nor_fall_below_one(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    for quota, expected in ((None, affinity), (0.5, 1), (1.9, 1), (64.0, affinity)):
        monkeypatch.setattr(workers, "cgroup_cpu_quota", lambda quota=quota: quota)
        assert workers.usable_cores() == expected

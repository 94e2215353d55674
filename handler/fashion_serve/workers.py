"""The worker's siblings: the other processes its parent started, which under TorchServe are
the frontend's other workers (of every model it serves). Whether any of them is running now
tells the handler whether another worker competes for the cores, so that one explanation may
use more than one of them (fashion_serve.ig.PathThreads; docs/performance.md#explanations).

The siblings are the frontend's workers (or the kserve runtime's supervisor's). Under
TorchServe's `cpu_launcher` each worker's parent is its own launcher, so a worker sees none;
but that launcher binds each worker to cores of its own (numactl or taskset), so no sibling
competes for them, and `usable_cores` (the affinity) is what limits the split. Read from /proc
(Linux); elsewhere, or where /proc cannot be read, the siblings always count as running, and
nothing is split.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# How long a list of siblings is trusted: the server starts and restarts workers at any time
# (a new one loading the model is busy), and a scan of /proc costs about a millisecond.
REFRESH_S = 1.0


class SiblingWorkers:
    """The other children of this process's parent, found again every REFRESH_S."""

    def __init__(self, parent: int | None = None) -> None:
        self.parent = os.getppid() if parent is None else parent
        self.pids: list[int] | None = None
        self._found_at: float | None = None

    def any_running(self) -> bool:
        """Whether a sibling has a thread running or waiting for a core right now."""
        now = time.monotonic()
        if self._found_at is None or now - self._found_at > REFRESH_S:
            self.pids = _children(self.parent)
            self._found_at = now
        return self.pids is None or any(_running(pid) for pid in self.pids)


def usable_cores() -> int:
    """The cores this process may keep busy: its CPU affinity, and no more than its cgroup's
    CPU quota (a container's or a Kubernetes pod's CPU limit) allows, rounded down, at least 1."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def cgroup_cpu_quota(proc: Path = PROC, root: Path = CGROUP_ROOT) -> float | None:
    """CPUs this process's cgroup and its ancestors may use (the smallest quota / period):
    cgroup v2's cpu.max or v1's cpu.cfs_quota_us; None without a limit or a readable cgroup."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:  # v2: one unified tree
            limits += _limits_along(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            limits += _limits_along(root / controllers, path, _v1_quota)
    return min(limits) if limits else None


def _limits_along(tree: Path, path: str, read_quota) -> list[float]:
    """The quotas set on `path` and each of its ancestors in `tree`. Inside a container the
    path is often the host's and not mounted: then the tree's root is the container's own."""
    parts = [part for part in path.split("/") if part]
    limits = []
    for depth in range(len(parts) + 1):
        quota = read_quota(tree.joinpath(*parts[:depth]))
        if quota is not None:
            limits.append(quota)
    return limits


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def _children(parent: int) -> list[int] | None:
    """Processes whose parent is `parent`, except this one; None where /proc is unreadable."""
    me = os.getpid()
    try:
        pids = [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return None
    return [
        pid
        for pid in pids
        if pid != me and (fields := _stat(f"{PROC}/{pid}/stat")) and int(fields[1]) == parent
    ]


def _running(pid: int) -> bool:
    """Whether any thread of `pid` is in state R (running or waiting for a core)."""
    try:
        threads = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return False  # gone
    return any(
        (fields := _stat(f"{PROC}/{pid}/task/{tid}/stat")) and fields[0] == b"R" for tid in threads
    )


def _stat(path: str) -> list[bytes] | None:
    """A /proc stat line's fields after the command name (state, ppid, ...); None if gone."""
    try:
        with open(path, "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    end = text.rfind(b")")  # the name may hold ")" and spaces, nothing after it does
    return text[end + 2 :].split() if end >= 0 else None

"""The worker's siblings: the other processes its parent started, which under TorchServe are
the frontend's other workers (of every model it serves). Whether any of them is running now
tells the handler whether the cores are otherwise idle, so that one explanation may use
more than one of them (fashion_ig.PathThreads; docs/performance.md#explanations).

Read from /proc (Linux); elsewhere, or where /proc cannot be read, the siblings always count
as running, and nothing is split.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC = Path("/proc")
# How long a list of siblings is trusted: TorchServe starts and restarts workers at any time,
# and a scan of /proc costs about a millisecond.
REFRESH_S = 10.0


class SiblingWorkers:
    """The other children of this process's parent, found again every REFRESH_S."""

    def __init__(self, parent: int | None = None) -> None:
        self.parent = os.getppid() if parent is None else parent
        self.pids: list[int] | None = None
        self._found_at = 0.0

    def any_running(self) -> bool:
        """Whether a sibling has a thread running or waiting for a core right now."""
        now = time.monotonic()
        if self.pids is None or now - self._found_at > REFRESH_S:
            self.pids = _children(self.parent)
            self._found_at = now
        return self.pids is None or any(_running(pid) for pid in self.pids)


def _children(parent: int) -> list[int] | None:
    """Processes whose parent is `parent`, except this one; None where /proc is unreadable."""
    me = os.getpid()
    try:
        entries = [entry.name for entry in os.scandir(PROC) if entry.name.isdigit()]
    except OSError:
        return None
    children = []
    for name in entries:
        stat = _stat(PROC / name / "stat")
        if stat is not None and int(stat[1]) == parent and int(name) != me:
            children.append(int(name))
    return children


def _running(pid: int) -> bool:
    """Whether any thread of `pid` is in state R (running or runnable)."""
    try:
        tasks = list(os.scandir(PROC / str(pid) / "task"))
    except OSError:
        return False  # gone
    return any((stat := _stat(Path(task.path) / "stat")) and stat[0] == "R" for task in tasks)


def _stat(path: Path) -> list[str] | None:
    """A /proc stat line's fields after the command name (state, ppid, ...); None if gone."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    return text[text.rindex(b")") + 2 :].decode().split()

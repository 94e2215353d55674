"""The handler's glibc setting, checked where malloc's blocks come from and go to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_serve import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

HANDLER_DIR = Path(memory.__file__).parent
# An 8 MiB block is above glibc's default mmap threshold (128 KiB) and below the handler's
# 32 MiB: from the heap it lies below the program break, mmapped far above it. A 20 MiB
# block freed at the heap's top is given back (the break drops) unless the trim threshold
# is above it, as the handler's 64 MiB is.
PROBE = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from fashion_serve import memory
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
libc.sbrk.argtypes = [ctypes.c_ssize_t]
if sys.argv[2] == "set":
    print(memory.keep_freed_memory())
block = libc.malloc(8 << 20)
print("heap" if block < libc.sbrk(0) else "mmap")
top = libc.malloc(20 << 20)
end = top + (20 << 20)
libc.free(top)
print("kept" if libc.sbrk(0) >= end else "trimmed")
"""


def probe(action: str, **env: str) -> list[str]:
    names = {name for _, name, _, _ in memory.THRESHOLDS} | {"GLIBC_TUNABLES"}
    clean = {k: v for k, v in os.environ.items() if k not in names}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(HANDLER_DIR), action],
        env=clean | env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.split("\n")[:-1]


def test_blocks_come_from_the_heap_and_stay_there_once_the_handler_set_it():
    assert probe("set") == ["freed memory kept for reuse (glibc thresholds raised)", "heap", "kept"]


def test_the_environment_decides_each_threshold_it_sets():
    # Both set: the handler leaves malloc alone (an 8 MiB block above 128 KiB is mmapped).
    said, where, _ = probe("set", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
    assert (said, where) == ("malloc thresholds from the environment", "mmap")
    # Only the trim threshold set: the handler raises the mmap threshold alone.
    said, where, trim = probe("set", MALLOC_TRIM_THRESHOLD_="1048576")
    assert (said.startswith("freed memory kept"), where, trim) == (True, "heap", "trimmed")

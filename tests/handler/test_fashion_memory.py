"""The handler's glibc setting, checked where malloc's blocks come from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fashion_memory

HANDLER_DIR = Path(fashion_memory.__file__).parent
# An 8 MiB block: above glibc's default mmap threshold (128 KiB), below the handler's 32 MiB.
# From the heap, it lies below the program break; mmapped, far above it.
PROBE = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
import fashion_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_ssize_t]
if sys.argv[2] == "set":
    print(fashion_memory.keep_freed_memory())
block = libc.malloc(8 << 20)
print("heap" if block < libc.sbrk(0) else "mmap")
"""


def probe(action: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in fashion_memory.ENVIRONMENT}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(HANDLER_DIR), action],
        env=clean | env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.split("\n")[:-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_come_from_the_heap_once_the_handler_set_it():
    assert probe("leave") == ["mmap"]  # glibc's default
    said, where = probe("set")
    assert where == "heap" and said.startswith("freed memory kept")


def test_thresholds_from_the_environment_are_left_alone():
    said, where = probe("set", MALLOC_MMAP_THRESHOLD_="131072")
    assert said == "malloc thresholds from the environment" and where == "mmap"

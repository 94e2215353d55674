"""glibc's malloc told to keep a worker's freed tensors for reuse.

An explanation allocates tensors of a few MiB per pass. With glibc's defaults a worker gives
that memory back to the kernel after each request and faults it in again on the next: a lone
explanation spent a third of its CPU in the kernel (docs/performance.md#explanations). The
handler raises the two thresholds when it loads, so the setting travels with the archive to
whatever starts TorchServe (scripts/serve.sh, the image, KServe's runtime, a user's own
`torchserve --start`). Thresholds a user set in the environment are left as they are.
"""

from __future__ import annotations

import ctypes
import os

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 32 MiB come from the heap, and up to 64 MiB free at its top stays there.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> str:
    """Raise this process's glibc thresholds unless the environment sets them; says what
    happened (for the worker's load log line)."""
    if any(name in os.environ for name in ENVIRONMENT):
        return "malloc thresholds from the environment"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc left as it is (no mallopt)"
    # mallopt answers 1 on success; musl's accepts the call and answers 0.
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return "malloc left as it is (not glibc)"
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return "freed memory kept for reuse (glibc mmap threshold 32 MiB, trim 64 MiB)"

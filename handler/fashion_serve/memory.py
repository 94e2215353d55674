"""glibc's malloc told to keep a worker's freed tensors for reuse.

An explanation allocates tensors of a few MiB per pass. With glibc's defaults a worker gives
that memory back to the kernel after each request and faults it in again on the next: a lone
explanation spent a third of its CPU in the kernel (docs/performance.md#explanations). The
handler raises the two thresholds when it loads, so the setting travels with the archive to
whatever starts TorchServe (scripts/serve.sh, the image, KServe's runtime, a user's own
`torchserve --start`). A threshold set in the environment is left as it is.
"""

from __future__ import annotations

import ctypes
import os

# glibc's malloc.h: (mallopt parameter, environment variable, GLIBC_TUNABLES name, value)
THRESHOLDS = (
    # Blocks up to 32 MiB (glibc's most on 64-bit) come from the heap, not from mmap...
    (-3, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", 32 << 20),
    # ...and up to 64 MiB free at the heap's top stays there.
    (-1, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", 64 << 20),
)


def keep_freed_memory() -> str:
    """Raise each of this process's glibc thresholds that the environment does not set;
    says what happened (for the worker's load log line)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    unset = [(param, value) for param, env, tunable, value in THRESHOLDS
             if env not in os.environ and tunable not in tunables]  # fmt: skip
    if not unset:
        return "malloc thresholds from the environment"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc left as it is (no mallopt)"
    # mallopt answers 1 on success; musl's accepts the call and answers 0.
    if not all(mallopt(param, value) == 1 for param, value in unset):
        return "malloc left as it is (mallopt refused)"
    return "freed memory kept for reuse (glibc thresholds raised)"

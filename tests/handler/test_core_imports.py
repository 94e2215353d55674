"""The core knows no server, and parsing a request needs no Captum."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ("archive", "batcher", "contract", "errors", "explain", "ig", "image", "memory",
        "metrics", "oip", "options", "predict", "request", "service", "settings",
        "workers")  # fmt: skip


def imported_after(statement: str) -> set[str]:
    """Top-level module names in sys.modules after `statement`, in a fresh interpreter."""
    listing = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    code = f"{statement}\nimport sys\n{listing}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_core_imports_neither_server():
    modules = imported_after("\n".join(f"import fashion_serve.{name}" for name in CORE))
    assert not {"ts", "kserve", "fastapi", "grpc", "uvicorn"} & modules


@pytest.mark.parametrize("module", ["options", "request", "oip", "service"])
def test_request_parsing_and_the_service_import_no_captum(module):
    """Captum (about a second of a worker's start) is imported on first use or in the
    background once the model serves (explain.warm_captum)."""
    assert "captum" not in imported_after(f"import fashion_serve.{module}")


def test_each_runtime_imports_its_own_server_only():
    assert "kserve" not in imported_after("import fashion_serve.torchserve_runtime")
    assert "ts" not in imported_after("import fashion_serve.kserve_runtime")

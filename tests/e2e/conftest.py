"""Real servers on free loopback ports, started and stopped by the project's scripts.

Fixtures (session scope; the server is always stopped, even when a test fails):
- `server_tiny`: the untrained `tiny_export_dir` model on each runtime in turn (torchserve,
  kserve): what both must answer alike (formats, options, errors, clients, tokens).
- `torchserve_tiny`, `kserve_tiny`: the same on one runtime, for what only it has.
- `torchserve_trained`: serves the `export_dir` model (short real training): correctness.
  Skipped when the training fixture or the dataset is missing.
Each yields a `tests.support.servers.TorchServe` or `KServeRuntime` (URLs, tokens, run dir,
workers).
E2E_HANDLER_DIR points the archive at another handler folder (default: handler/).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.e2e_helpers import REPO_ROOT, SAMPLES_DIR
from tests.support.servers import KServeRuntime, TorchServe

# Generous: a worker on a loaded CI machine can take a while to load torch and captum.
START_TIMEOUT_S = 180


@contextlib.contextmanager
def running_server(
    export_dir: Path, work_dir: Path, runtime: type[TorchServe] = TorchServe
) -> Iterator[TorchServe]:
    """scripts/archive.sh + scripts/serve.sh start in work_dir, and always serve.sh stop
    afterwards, which fails the test if the server or a worker outlives it."""
    handler_dir = os.environ.get("E2E_HANDLER_DIR")
    server = runtime(
        work_dir / "run",
        export_dir,
        handler_dir=REPO_ROOT / handler_dir if handler_dir else None,  # relative: to the repo
        start_timeout_s=START_TIMEOUT_S,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def torchserve_tiny(tiny_export_dir, tmp_path_factory) -> Iterator[TorchServe]:
    with running_server(tiny_export_dir, tmp_path_factory.mktemp("ts_tiny")) as instance:
        yield instance


@pytest.fixture(scope="session")
def kserve_tiny(tiny_export_dir, tmp_path_factory) -> Iterator[KServeRuntime]:
    work_dir = tmp_path_factory.mktemp("kserve_tiny")
    with running_server(tiny_export_dir, work_dir, KServeRuntime) as instance:
        yield instance


@pytest.fixture(scope="session", params=["torchserve", "kserve"])
def server_tiny(request) -> TorchServe:
    """Each runtime in turn, serving the same archive of the tiny model."""
    return request.getfixturevalue(f"{request.param}_tiny")


@pytest.fixture(scope="session")
def torchserve_trained(export_dir, tmp_path_factory) -> Iterator[TorchServe]:
    with running_server(export_dir, tmp_path_factory.mktemp("ts_trained")) as instance:
        yield instance


@pytest.fixture(scope="session")
def samples() -> dict[str, dict]:
    """samples/index.json: file name -> {"label", "class_name", "test_index"}."""
    return json.loads((SAMPLES_DIR / "index.json").read_text())

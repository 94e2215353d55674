"""A real TorchServe on free loopback ports, started and stopped by the project's scripts.

Fixtures (session scope; the server is always stopped, even when a test fails):
- `torchserve_tiny`: serves the untrained `tiny_export_dir` model: formats, errors, security.
- `torchserve_trained`: serves the `export_dir` model (short real training): correctness.
  Skipped when the training fixture or the dataset is missing.
Both yield a `TorchServeInstance` (URLs, tokens, run dir). E2E_HANDLER_DIR points the archive
at another handler folder (default: handler/).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from e2e_helpers import REPO_ROOT, SAMPLES_DIR

MODEL_NAME = "fashion-cnn"
START_TIMEOUT_S = 180
SCRIPT_TIMEOUT_S = START_TIMEOUT_S + 60


@dataclass(frozen=True)
class TorchServeInstance:
    inference_url: str  # e.g. http://127.0.0.1:40123
    management_url: str
    metrics_url: str
    model: str
    inference_token: str
    management_token: str
    run_dir: Path  # RUN_DIR given to scripts/serve.sh: logs/, key_file.json, endpoints.json

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model}"

    @property
    def explanations_url(self) -> str:
        return f"{self.inference_url}/explanations/{self.model}"

    @property
    def inference_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.inference_token}"}

    @property
    def management_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management_token}"}

    def workers(self) -> list[dict]:
        """The model's workers as the management API describes them (pid, status, ...)."""
        response = requests.get(
            f"{self.management_url}/models/{self.model}",
            headers=self.management_headers,
            timeout=10,
        )
        response.raise_for_status()
        return [worker for version in response.json() for worker in version["workers"]]


def free_ports(count: int) -> list[int]:
    """Ports the OS had free a moment ago (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # serve.sh redirects TorchServe's own output, so capturing the script's output is safe.
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )


def start_torchserve(export_dir: Path, work_dir: Path) -> tuple[TorchServeInstance, dict]:
    """Archive export_dir into work_dir/model_store and start TorchServe on free ports."""
    model_store = work_dir / "model_store"
    run_dir = work_dir / "run"
    archive_env = {"MODEL_STORE": str(model_store)}
    if os.environ.get("E2E_HANDLER_DIR"):
        archive_env["HANDLER_DIR"] = os.environ["E2E_HANDLER_DIR"]
    archived = run_script(["scripts/archive.sh", str(export_dir), MODEL_NAME], archive_env)
    assert archived.returncode == 0, f"archive.sh failed:\n{archived.stdout}\n{archived.stderr}"

    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    serve_env = {
        "RUN_DIR": str(run_dir),
        "MODEL_STORE": str(model_store),
        "MODEL_NAME": MODEL_NAME,
        "INFERENCE_PORT": str(inference),
        "MANAGEMENT_PORT": str(management),
        "METRICS_PORT": str(metrics),
        "GRPC_INFERENCE_PORT": str(grpc_inference),
        "GRPC_MANAGEMENT_PORT": str(grpc_management),
        "START_TIMEOUT": str(START_TIMEOUT_S),
    }
    started = run_script(["scripts/serve.sh", "start"], serve_env)
    if started.returncode != 0:
        run_script(["scripts/serve.sh", "stop"], serve_env)
        pytest.fail(f"serve.sh start failed:\n{started.stdout}\n{started.stderr}")
    keys = json.loads((run_dir / "key_file.json").read_text())
    instance = TorchServeInstance(
        inference_url=f"http://127.0.0.1:{inference}",
        management_url=f"http://127.0.0.1:{management}",
        metrics_url=f"http://127.0.0.1:{metrics}",
        model=MODEL_NAME,
        inference_token=keys["inference"]["key"],
        management_token=keys["management"]["key"],
        run_dir=run_dir,
    )
    return instance, serve_env


def stop_torchserve(instance: TorchServeInstance, serve_env: dict) -> None:
    """serve.sh stop, then check that neither the frontend nor a worker is left running."""
    pid_file = Path(serve_env["RUN_DIR"]) / "tmp" / ".model_server.pid"
    pids = [int(pid_file.read_text())] if pid_file.exists() else []
    # The server may already be down; stop still has to succeed then.
    with contextlib.suppress(requests.RequestException):
        pids += [int(worker["pid"]) for worker in instance.workers() if worker.get("pid")]
    stopped = run_script(["scripts/serve.sh", "stop"], serve_env)
    assert stopped.returncode == 0, f"serve.sh stop failed:\n{stopped.stdout}\n{stopped.stderr}"
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not alive, f"processes still alive after serve.sh stop: {alive}"


@contextlib.contextmanager
def running_torchserve(export_dir: Path, work_dir: Path) -> Iterator[TorchServeInstance]:
    """start_torchserve, and always stop_torchserve afterwards."""
    instance, serve_env = start_torchserve(export_dir, work_dir)
    try:
        yield instance
    finally:
        stop_torchserve(instance, serve_env)


@pytest.fixture(scope="session")
def torchserve_tiny(tiny_export_dir, tmp_path_factory) -> Iterator[TorchServeInstance]:
    with running_torchserve(tiny_export_dir, tmp_path_factory.mktemp("ts_tiny")) as instance:
        yield instance


@pytest.fixture(scope="session")
def torchserve_trained(export_dir, tmp_path_factory) -> Iterator[TorchServeInstance]:
    with running_torchserve(export_dir, tmp_path_factory.mktemp("ts_trained")) as instance:
        yield instance


@pytest.fixture(scope="session")
def samples() -> dict[str, dict]:
    """samples/index.json: file name -> {"label", "class_name", "test_index"}."""
    return json.loads((SAMPLES_DIR / "index.json").read_text())

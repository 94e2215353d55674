"""The image's healthcheck (also the Kubernetes readiness probe) against a fake management API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HEALTHCHECK = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


class FakeManagementApi:
    """Answers GET /models/fashion-cnn like TorchServe: 400 without the right token."""

    def __init__(self, key_file: Path, worker_status: str = "READY") -> None:
        self.key_file, self.worker_status = key_file, worker_status
        self.management_key, self.api_key = "old-key", "api-key"
        self.write_keys()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if self.path == "/token?type=management" and token == api.api_key:
                    api.management_key = "new-key"
                    api.write_keys()
                    self.answer(200, {"message": "renewed"})
                elif self.path == "/models/fashion-cnn" and token == api.management_key:
                    workers = [{"id": "9000", "status": api.worker_status}]
                    self.answer(200, [{"modelName": "fashion-cnn", "workers": workers}])
                else:
                    self.answer(400, {"code": 400, "message": "Token Authentication failed"})

            def answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write_keys(self) -> None:
        keys = {
            "management": {"key": self.management_key, "expiration time": "2099-01-01T00:00:00Z"},
            "inference": {"key": "inference-key", "expiration time": "2099-01-01T00:00:00Z"},
            "API": {"key": self.api_key},
        }
        self.key_file.write_text(json.dumps(keys))


@pytest.fixture
def api(tmp_path):
    fake = FakeManagementApi(tmp_path / "key_file.json")
    yield fake
    fake.server.shutdown()


def healthcheck(api: FakeManagementApi, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(HEALTHCHECK), "--port", str(api.port)]
    return subprocess.run(
        [*command, "--key-file", str(api.key_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_healthy_when_a_worker_is_ready(api):
    result = healthcheck(api)
    assert result.returncode == 0, result.stdout
    assert "1 READY" in result.stdout


def test_unhealthy_while_the_worker_is_loading(api):
    api.worker_status = "UNLOADING"
    assert healthcheck(api).returncode == 1


def test_renews_an_expired_management_key_with_the_api_key(api):
    api.management_key = "rotated-on-the-server"  # the key in the file no longer works
    result = healthcheck(api)
    assert result.returncode == 0, result.stdout
    assert json.loads(api.key_file.read_text())["management"]["key"] == "new-key"


def test_unhealthy_without_a_key_file(api):
    api.key_file.unlink()
    result = healthcheck(api)
    assert result.returncode == 1
    assert "no readable key file" in result.stdout


def test_token_auth_off_needs_no_key_file(api):
    """The scaled-out pods run TorchServe without token auth (authentication at the ingress)."""
    api.key_file.unlink()
    api.management_key = ""  # the fake now answers a request without a token
    result = healthcheck(api, {"TS_DISABLE_TOKEN_AUTHORIZATION": "true"})
    assert result.returncode == 0, result.stdout
    assert "1 READY" in result.stdout


def test_unhealthy_when_nothing_listens(api):
    api.server.shutdown()
    api.server.server_close()
    result = healthcheck(api)
    assert result.returncode == 1
    assert "unhealthy" in result.stdout

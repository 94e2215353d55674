"""The image's healthcheck (also the Kubernetes readiness probe), per runtime: TorchServe's
branch against a fake management API, the KServe runtime's against a fake and the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.servers import KServeRuntime

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


def healthcheck(api, env: dict | None = None) -> subprocess.CompletedProcess:
    """docker/healthcheck.py against `api`'s port and key file; RUNTIME and the token
    variables come from `env` only, as in a container."""
    command = [sys.executable, str(HEALTHCHECK), "--port", str(api.port)]
    unset = ("RUNTIME", "TS_DISABLE_TOKEN_AUTHORIZATION", "DISABLE_TOKEN_AUTHORIZATION")
    return subprocess.run(
        [*command, "--key-file", str(api.key_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if k not in unset}, **(env or {})},
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


# --- RUNTIME=kserve: GET /v2/models/{model}/ready with the inference key -----------------------


class FakeKServeRuntime:
    """Answers GET /v2/models/fashion-cnn/ready like the KServe runtime: 401 without the
    inference key, 503 while the model loads, else 200 {"name": ..., "ready": true}."""

    def __init__(self, key_file: Path) -> None:
        self.key_file, self.ready = key_file, True
        self.inference_key = "inference-key"
        key_file.write_text(
            json.dumps({"inference": {"key": "inference-key"}, "management": {"key": "m-key"}})
        )
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if self.path != "/v2/models/fashion-cnn/ready":
                    self.answer(404, {"detail": "Not Found"})
                elif api.inference_key and token != api.inference_key:
                    self.answer(401, {"error": "Unauthorized"})
                elif not api.ready:
                    self.answer(503, {"error": "Model with name fashion-cnn is not ready."})
                else:
                    self.answer(200, {"name": "fashion-cnn", "ready": True})

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


@pytest.fixture
def kserve_api(tmp_path):
    fake = FakeKServeRuntime(tmp_path / "key_file.json")
    yield fake
    fake.server.shutdown()


KSERVE = {"RUNTIME": "kserve"}  # what the container's environment says


def test_kserve_healthy_when_the_model_is_ready(kserve_api):
    result = healthcheck(kserve_api, KSERVE)
    assert result.returncode == 0, result.stdout
    assert "fashion-cnn: ready" in result.stdout


def test_kserve_unhealthy_while_the_model_loads(kserve_api):
    kserve_api.ready = False
    result = healthcheck(kserve_api, KSERVE)
    assert result.returncode == 1
    assert "answered 503" in result.stdout


def test_kserve_unhealthy_with_a_key_the_server_does_not_hold(kserve_api):
    """A key file left by an earlier start: the runtime makes new keys each time."""
    kserve_api.inference_key = "made-at-this-start"
    result = healthcheck(kserve_api, KSERVE)
    assert result.returncode == 1
    assert "answered 401" in result.stdout


def test_kserve_token_auth_off_needs_no_key_file(kserve_api):
    kserve_api.key_file.unlink()
    kserve_api.inference_key = ""  # the fake now answers a request without a token
    result = healthcheck(kserve_api, {**KSERVE, "DISABLE_TOKEN_AUTHORIZATION": "true"})
    assert result.returncode == 0, result.stdout


def test_kserve_reads_its_own_token_variable_not_torchserves(kserve_api):
    """TS_DISABLE_TOKEN_AUTHORIZATION is TorchServe's; the KServe runtime keeps its tokens."""
    kserve_api.key_file.unlink()
    result = healthcheck(kserve_api, {**KSERVE, "TS_DISABLE_TOKEN_AUTHORIZATION": "true"})
    assert result.returncode == 1
    assert "no readable key file" in result.stdout


def test_without_runtime_the_torchserve_branch_asks_the_management_api(kserve_api):
    """RUNTIME unset is TorchServe (the image's default): a KServe answer is not accepted."""
    result = healthcheck(kserve_api)
    assert result.returncode == 1
    assert "GET /models/fashion-cnn answered 404" in result.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_kserve_branch_against_the_real_runtime(tiny_export_dir, tmp_path):
    """The real KServe runtime (scripts/serve.sh start --runtime kserve, loopback): its
    key file and its model-ready route are what the healthcheck reads and asks."""
    with KServeRuntime(tmp_path / "run", tiny_export_dir, start_timeout_s=180) as server:
        port = server.ports["INFERENCE_PORT"]
        key_file = server.run_dir / "key_file.json"
        command = [sys.executable, str(HEALTHCHECK), "--port", str(port), "--key-file"]

        def check(key_path: Path, env: dict) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*command, str(key_path)],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **env},
            )

        result = check(key_file, KSERVE)
        assert result.returncode == 0, result.stdout
        assert "fashion-cnn: ready" in result.stdout
        stale = tmp_path / "stale_key_file.json"
        stale.write_text(json.dumps({"inference": {"key": "x"}, "management": {"key": "y"}}))
        assert check(stale, KSERVE).returncode == 1
        # Token auth off in the healthcheck while the server has it on: refused, not healthy.
        assert check(key_file, {**KSERVE, "DISABLE_TOKEN_AUTHORIZATION": "true"}).returncode == 1

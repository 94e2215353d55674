"""scripts/management_api.py against a fake TorchServe management API: tokens from the key
file, renewal of an expired one, and refusals as the operator reads them (the real API:
tests/e2e/test_update.py, tests/docker/test_healthcheck.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.management_api import ManagementApi, ManagementError


@pytest.fixture
def fake(tmp_path):
    """Answers like TorchServe 0.12: 400 to a wrong token, /token?type=management with the
    API key writes a new management key; records (method, path, token) of every request."""
    state = {"key": "fresh", "requests": []}
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "expired"}, "API": {"key": "api"}}))

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            state["requests"].append((self.command, self.path, token))
            if self.path == "/token?type=management" and token == "api":
                key_file.write_text(json.dumps({"management": {"key": "fresh"}}))
                status, body = 200, {"message": "renewed"}
            elif token != state["key"]:
                status, body = 400, {"code": 400, "message": "Token Authentication failed"}
            elif self.command == "PUT":
                status, body = 404, {"code": 404, "message": "Model version 9.9 not found"}
            else:
                status, body = 200, [{"modelVersion": "1.0", "workers": [{"status": "READY"}]}]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield ManagementApi(url, "fashion-cnn", key_file), state
    server.shutdown()


def test_an_expired_management_key_is_renewed_once_and_the_call_repeated(fake):
    api, state = fake
    assert api.workers() == [{"status": "READY"}]
    assert state["requests"] == [
        ("GET", "/models/fashion-cnn", "expired"),
        ("GET", "/token?type=management", "api"),
        ("GET", "/models/fashion-cnn", "fresh"),
    ]


def test_without_a_key_file_no_token_is_sent(fake, tmp_path):
    api, state = fake
    state["key"] = ""  # token authorization off
    (tmp_path / "key_file.json").unlink()
    assert api.describe()["modelVersion"] == "1.0"
    assert state["requests"] == [("GET", "/models/fashion-cnn", "")]


def test_a_refusal_says_what_failed_and_torchserve_s_message(fake):
    api, _ = fake
    with pytest.raises(ManagementError) as refused:
        api.set_default("9.9")
    assert str(refused.value) == (
        "making 9.9 the default: TorchServe answered 404: Model version 9.9 not found"
    )


def test_no_answer_names_the_address(fake):
    api, _ = fake
    api.url = "http://127.0.0.1:9"  # discard: nothing listens
    with pytest.raises(ManagementError) as refused:
        api.describe()
    assert str(refused.value).startswith("no management API at http://127.0.0.1:9:")

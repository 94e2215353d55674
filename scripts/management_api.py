"""TorchServe's management API and key_file.json, for the project's four callers: rollout.py,
client.py, docker/healthcheck.py and the tests' harness (tests/support/servers.py).

    api = ManagementApi("http://127.0.0.1:8081", "fashion-cnn", Path("run/key_file.json"))
    api.describe()            # the default version: {"modelVersion", "workers", ...} or None
    api.workers()             # its workers: [{"id", "pid", "status": "READY", ...}]
    api.register("fashion-cnn-2.0.mar"); api.set_default("2.0"); api.unregister("1.0")

Token authorization (on by default in TorchServe 0.12): key_file.json holds an "inference",
a "management" and an "API" key (the KServe runtime's holds "inference" only). The first two
expire after token_expiration_min; TorchServe then answers 400, and GET /token?type=... with
the API key makes it write a new one into the file. Without a key file, no token is sent.
Standard library only: in the image it lies beside fashion-serve-rollout and
fashion-serve-healthcheck, which run without the project installed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SLOW_CALL_TIMEOUT_S = 300  # an unregister waits for the old workers to stop


class ManagementError(RuntimeError):
    """The management API did not answer, or refused a call: the message is for the operator."""


def read_keys(key_file: Path) -> dict:
    """key_file.json: {"inference": {"key": ...}, "management": {...}, "API": {...}}."""
    return json.loads(key_file.read_text())


def auth_header(token: str | None) -> dict[str, str]:
    """The Authorization header that carries `token`; none without one (token auth off)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def call(
    method: str, url: str, token: str | None = None, timeout_s: float = 30
) -> tuple[int, object]:
    """One request: (status, the body parsed as JSON, else as text) for any HTTP answer.
    Raises OSError when nothing answers in time."""
    request = urllib.request.Request(url, method=method, headers=auth_header(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def renew_key(
    management_url: str, key_file: Path, api: str = "management", timeout_s: float = 30
) -> str | None:
    """Has TorchServe write a new `api` key into key_file.json (asked with the file's API
    key) and returns it; None if the file has no API key (the KServe runtime's)."""
    api_key = read_keys(key_file).get("API", {}).get("key")
    if not api_key:
        return None
    call("GET", f"{management_url.rstrip('/')}/token?type={api}", api_key, timeout_s)
    return read_keys(key_file).get(api, {}).get("key")


class ManagementApi:
    """One model on TorchServe's management API, with the key file's management key
    (renewed once when refused). key_file None or absent: token authorization is off."""

    def __init__(self, url: str, model: str, key_file: Path | None = None, timeout_s=30.0):
        self.url, self.model = url.rstrip("/"), model
        self.key_file, self.timeout_s = key_file, timeout_s

    def call(self, method: str, path: str, timeout_s: float | None = None) -> tuple[int, object]:
        """(status, body) of `method path`; ManagementError if nothing answers."""
        timeout_s = timeout_s or self.timeout_s
        has_keys = self.key_file is not None and self.key_file.exists()
        token = read_keys(self.key_file).get("management", {}).get("key") if has_keys else None
        try:
            status, body = call(method, self.url + path, token, timeout_s)
            # TorchServe 0.12 answers an expired (or wrong) token with 400.
            if status == 400 and has_keys:
                token = renew_key(self.url, self.key_file, "management", timeout_s)
                if token:
                    status, body = call(method, self.url + path, token, timeout_s)
        except OSError as error:
            raise ManagementError(f"no management API at {self.url}: {error}") from None
        return status, body

    def expect(self, method: str, path: str, what: str, timeout_s: float | None = None, ok=(200,)):
        """The body of an answer whose status is in `ok`; ManagementError saying `what`
        failed otherwise."""
        status, body = self.call(method, path, timeout_s)
        if status not in ok:
            message = body.get("message", body) if isinstance(body, dict) else body
            raise ManagementError(f"{what}: TorchServe answered {status}: {message}")
        return body

    def _path(self, version: str | None = None) -> str:
        return f"/models/{self.model}" + (f"/{urllib.parse.quote(version)}" if version else "")

    def describe(self, version: str | None = None) -> dict | None:
        """The version's description (workers, minWorkers, jobQueueStatus...), the default
        version's without one; None if TorchServe does not describe it."""
        status, body = self.call("GET", self._path(version))
        return body[0] if status == 200 and body else None

    def workers(self, version: str | None = None) -> list[dict]:
        """The version's workers ({"id", "pid", "status": "READY"...}), the default's without
        one; ManagementError if TorchServe does not describe it."""
        status, body = self.call("GET", self._path(version))
        if status != 200:
            raise ManagementError(f"GET {self._path(version)} answered {status}: {body!r:.200}")
        return [worker for described in body for worker in described.get("workers", [])]

    def versions(self) -> list[dict]:
        """Every registered version's description; [] if the model is not registered."""
        status, body = self.call("GET", f"{self._path()}/all")
        if status == 404:
            return []
        if status != 200:
            raise ManagementError(f"GET {self._path()}/all answered {status}: {body}")
        return body

    def register(self, mar: str) -> None:
        """Registers an archive of the model store, by file name, and returns while its
        workers start (watch them with describe). Asynchronous on purpose: TorchServe 0.12
        answers a synchronous register from the Netty thread that serves inference
        connections too, and the requests of those connections wait until the workers are
        READY (seconds; docs/reliability.md#updates-under-load)."""
        query = urllib.parse.urlencode(
            {"url": mar, "model_name": self.model, "synchronous": "false"}
        )
        # 202: "Processing worker updates..."
        self.expect(
            "POST", f"/models?{query}", f"registering {mar}", SLOW_CALL_TIMEOUT_S, (200, 202)
        )

    def set_default(self, version: str) -> None:
        self.expect("PUT", f"{self._path(version)}/set-default", f"making {version} the default")

    def unregister(self, version: str) -> None:
        self.expect("DELETE", self._path(version), f"unregistering {version}", SLOW_CALL_TIMEOUT_S)

"""The servers the tests start, and the benchmark and reliability report measure.

`TorchServe` is started the way users start it, through scripts/archive.sh and
scripts/serve.sh, in a private run directory on free loopback ports; `KServeRuntime` is the
same model on the other runtime (serve.sh start --runtime kserve).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import yaml

from fashion_serve.contract import DEFAULT_MODEL_NAME
from scripts.management_api import ManagementApi, auth_header, read_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "scripts"
MODEL_NAME = DEFAULT_MODEL_NAME


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (all held open while
    choosing, so no two are the same)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_properties(text: str) -> dict[str, str]:
    """A config.properties text's key=value lines (comments and blank lines left out)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def model_config(handler_dir: Path | None = None) -> dict:
    return yaml.safe_load(
        ((handler_dir or REPO_ROOT / "handler") / "model-config.yaml").read_text()
    )


@dataclass
class TorchServe:
    """One TorchServe started by scripts/serve.sh in `run_dir` on free loopback ports."""

    run_dir: Path
    export_dir: Path
    handler_dir: Path | None = None  # None: the repo's handler/
    env: dict = field(default_factory=dict)  # extra environment for serve.sh (e.g. MODEL_LOG_LEVEL)
    ports: dict = field(default_factory=dict)
    start_timeout_s: int = 120  # serve.sh START_TIMEOUT: how long to wait for a READY worker
    model: str = MODEL_NAME
    runtime = "torchserve"  # serve.sh's RUNTIME
    # (status, error type) for a missing or wrong token: TorchServe 0.12 answers 400.
    token_refusal = (400, "InvalidKeyException")
    has_management_api = True  # model registration, scaling, versions (serve.sh update)
    worker_death_resets_connections = False  # the Java frontend holds the clients' connections

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model_store = self.run_dir / "model_store"
        if not self.ports:
            names = ("INFERENCE_PORT", "MANAGEMENT_PORT", "METRICS_PORT")
            names += ("GRPC_INFERENCE_PORT", "GRPC_MANAGEMENT_PORT")
            self.ports = dict(zip(names, free_ports(len(names)), strict=True))

    # --- lifecycle, through the project's scripts -----------------------------------------
    def _script_env(self) -> dict:
        env = dict(os.environ)
        env.update({key: str(value) for key, value in self.ports.items()})
        env.update(RUN_DIR=str(self.run_dir), MODEL_STORE=str(self.model_store))
        env.update(MODEL_NAME=self.model, START_TIMEOUT=str(self.start_timeout_s))
        env.update(RUNTIME=self.runtime)
        if self.handler_dir is not None:
            env["HANDLER_DIR"] = str(self.handler_dir)
        env.update({key: str(value) for key, value in self.env.items()})
        return env

    def _script(self, *args: str, timeout_s: float = 180) -> None:
        log = self.run_dir / "scripts.log"
        with log.open("a") as out:
            result = subprocess.run(
                [str(SCRIPTS_DIR / args[0]), *args[1:]],
                env=self._script_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                check=False,
            )
        if result.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"scripts/{' '.join(args)} failed ({result.returncode}):\n{tail}")

    def archive(self) -> None:
        self._script("archive.sh", str(self.export_dir), self.model)

    def start(self) -> float:
        """serve.sh start (returns once a worker is READY); seconds it took. On failure the
        server is stopped before the error is raised."""
        started = time.perf_counter()
        try:
            self._script("serve.sh", "start", timeout_s=self.start_timeout_s + 60)
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._script("serve.sh", "stop", timeout_s=90)
            raise
        return time.perf_counter() - started

    def stop(self) -> None:
        """serve.sh stop; raises if the frontend or a worker is still alive afterwards."""
        pids = [self.frontend_pid()]
        # The server may be down or half up already: stop it all the same.
        with contextlib.suppress(OSError, RuntimeError, ValueError, KeyError, HTTPException):
            pids += [int(worker["pid"]) for worker in self.workers() if worker.get("pid")]
        self._script("serve.sh", "stop", timeout_s=90)
        alive = [pid for pid in pids if pid and Path(f"/proc/{pid}").exists()]
        if alive:
            raise RuntimeError(f"processes still alive after serve.sh stop: {alive}")

    def update(self, export_dir: Path) -> None:
        """serve.sh update --export-dir: swap to the export's version without downtime."""
        self._script("serve.sh", "update", "--export-dir", str(export_dir), timeout_s=600)

    def rollback(self) -> None:
        """serve.sh rollback: swap back to the version served before."""
        self._script("serve.sh", "rollback", timeout_s=600)

    def __enter__(self) -> TorchServe:
        self.archive()
        self.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            if exc_type is None:
                raise
            print(f"TorchServe: stopping after an error failed too: {error}", file=sys.stderr)

    # --- addresses and credentials ---------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['INFERENCE_PORT']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MANAGEMENT_PORT']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['METRICS_PORT']}"

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model}"

    @property
    def explanations_url(self) -> str:
        return f"{self.inference_url}/explanations/{self.model}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def keys(self) -> dict:
        return read_keys(self.key_file)

    @property
    def inference_token(self) -> str:
        return self.keys()["inference"]["key"]

    @property
    def management_token(self) -> str:
        return self.keys()["management"]["key"]

    @property
    def inference_headers(self) -> dict[str, str]:
        return auth_header(self.inference_token)

    @property
    def management_headers(self) -> dict[str, str]:
        return auth_header(self.management_token)

    def frontend_pid(self) -> int | None:
        pid_file = self.run_dir / "tmp" / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    # --- management API (scripts/management_api.py: ManagementError is a RuntimeError) ------
    @property
    def management(self) -> ManagementApi:
        return ManagementApi(self.management_url, self.model, self.key_file)

    def describe(self) -> list:
        """[the default version's description], as GET /models/{model} answers."""
        return self.management.expect("GET", f"/models/{self.model}", f"describing {self.model}")

    def workers(self) -> list[dict]:
        return self.management.workers()

    def ready_worker_pids(self) -> list[int]:
        return sorted(
            int(w["pid"]) for w in self.workers() if w.get("status") == "READY" and w.get("pid")
        )


class KServeRuntime(TorchServe):
    """The same archive on the kserve runtime (fashion_serve.kserve_server): REST and
    /metrics on INFERENCE_PORT, OIP gRPC on GRPC_INFERENCE_PORT, no management API."""

    runtime = "kserve"
    token_refusal = (401, "Unauthorized")
    has_management_api = False  # one version per start; KServe's model repository is off
    worker_death_resets_connections = True  # each worker holds its own clients' connections

    @property
    def metrics_url(self) -> str:
        return self.inference_url

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['GRPC_INFERENCE_PORT']}"

    def frontend_pid(self) -> int | None:
        """The supervisor's pid (it binds the HTTP port and restarts workers)."""
        try:
            pid = int((self.run_dir / "kserve.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def describe(self) -> list:
        url = f"{self.inference_url}/v2/models/{self.model}"
        status, body = http_call("GET", url, headers=self.inference_headers)
        if status != 200:
            raise RuntimeError(f"GET /v2/models/{self.model} answered {status}: {body[:200]!r}")
        return [json.loads(body)]

    def workers(self) -> list[dict]:
        """The supervisor's worker processes, each READY once it listens on the gRPC port.

        The workers share the HTTP socket the supervisor bound, so an HTTP readiness call is
        answered by whichever worker accepts it; a worker opens its own gRPC socket
        (SO_REUSEPORT) only after its model has loaded, which tells the workers apart."""
        supervisor = self.frontend_pid()
        if supervisor is None:
            return []
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        grpc_port = f":{self.ports['GRPC_INFERENCE_PORT']}"
        workers = []
        for pid in map(int, children):
            serving = any(s.endswith(grpc_port) for s in listening_sockets([pid]))
            workers.append({"pid": pid, "status": "READY" if serving else "LOADING"})
        return workers


def listening_sockets(pids: list[int]) -> list[str]:
    """'address:port' of every TCP socket in LISTEN state owned by these processes."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the process ended (or is not ours)
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile, or the process ended
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.append(f"{address}:{int(port_hex, 16)}")
    return sorted(found)


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def http_call(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout=30
) -> tuple[int, bytes]:
    """One request; (status, body) for any HTTP answer, including 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()

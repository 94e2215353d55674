"""Start the KServe runtime: one worker process per core over one model archive.

    python -m fashion_serve.kserve_server --archive model_store/fashion-cnn.mar \\
        --http-port 8080 --grpc-port 7070 --run-dir run

scripts/serve.sh start --runtime kserve runs this. The supervisor (this process):
- holds the HTTP port (bound, not listening: loopback unless --host says otherwise), so that
  a port in use fails the start here; each worker listens on it with a socket of its own,
  and on the gRPC port, through SO_REUSEPORT, and the kernel spreads connections over them;
- writes RUN_DIR/key_file.json (mode 600) with a fresh random inference key, in TorchServe's
  layout (scripts/client.py reads both runtimes' the same way), unless
  --disable-token-authorization (for a deployment that authenticates at its ingress);
- points every worker at one PROMETHEUS_MULTIPROC_DIR, so /metrics sums them all;
- starts `workers` processes (the archive's minWorkers unless given; one single-thread worker
  per core), restarts one that dies, and on SIGTERM or SIGINT stops them all and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fashion_serve.archive import read_archive

logger = logging.getLogger("fashion_serve.kserve_server")

STOP_GRACE_S = 10.0
RESTART_PAUSE_S = 1.0  # between restarts of a worker that keeps dying
DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # as config.properties' max_request_size


def write_key_file(path: Path) -> None:
    """Fresh keys in TorchServe's key_file.json layout, readable by this user only."""
    keys = {"inference": {"key": secrets.token_urlsafe(24)}}  # no management API here
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(keys, file, indent=2)


def reserve_port(host: str, port: int) -> socket.socket:
    """The HTTP port, bound with SO_REUSEPORT but not listening: no connection comes here,
    the workers may bind it too, and a port another program holds fails now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers: list[subprocess.Popen | None] = [None] * args.workers
        self.stopping = False

    def command(self) -> list[str]:
        args = self.args
        command = [
            sys.executable, "-m", "fashion_serve.kserve_runtime",
            "--archive", str(args.archive),
            "--http-port", str(args.http_port),
            "--host", args.host,
            "--grpc-port", str(args.grpc_port),
            "--batch-size", str(args.batch_size),
            "--max-request-bytes", str(args.max_request_bytes),
        ]  # fmt: skip
        if args.key_file is not None:
            command += ["--key-file", str(args.key_file)]
        return command

    def start_worker(self, index: int) -> None:
        process = subprocess.Popen(self.command())
        self.workers[index] = process
        logger.info("worker %d started (pid %d)", index, process.pid)

    def run(self) -> int:
        for index in range(len(self.workers)):
            self.start_worker(index)
        while not self.stopping:
            time.sleep(0.2)
            for index, process in enumerate(self.workers):
                if self.stopping or process is None or process.poll() is None:
                    continue
                logger.warning(
                    "worker %d (pid %d) exited with %s; starting another",
                    index, process.pid, process.returncode,
                )  # fmt: skip
                _mark_dead(process.pid)
                time.sleep(RESTART_PAUSE_S)
                if not self.stopping:
                    self.start_worker(index)
        return self.stop_workers()

    def request_stop(self, signum, frame) -> None:
        self.stopping = True

    def stop_workers(self) -> int:
        running = [p for p in self.workers if p is not None and p.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d did not stop in time: killing it", process.pid)
                process.kill()
                process.wait()
        return 0


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # after the directory is set

        multiprocess.mark_process_dead(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--archive",
        type=Path,
        required=True,
        help="the .mar from scripts/archive.sh, or a folder holding one",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("run"),
        help="key_file.json and the metrics files go here",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address for HTTP and gRPC")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=7070)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: the archive's minWorkers)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="most requests per batch (default: the archive's batchSize)",
    )
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument(
        "--disable-token-authorization",
        action="store_true",
        help="no tokens: only behind an ingress that authenticates",
    )
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )

    archive = read_archive(args.archive)  # fails here, before any port is taken
    args.archive = archive.path.resolve()
    args.workers = args.workers or int(archive.config.get("minWorkers", 1))
    args.batch_size = args.batch_size or int(archive.config.get("batchSize", 1))
    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    args.key_file = None
    if not args.disable_token_authorization:
        args.key_file = run_dir / "key_file.json"
        write_key_file(args.key_file)
    metrics_dir = run_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # a new server counts from zero
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    reserved = reserve_port(args.host, args.http_port)
    supervisor = Supervisor(args)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    logger.info(
        "KServe runtime: %s %s, %d workers, batches up to %d, http %s:%d, grpc %s:%d, tokens %s",
        archive.model_name, archive.model_version, args.workers, args.batch_size,
        args.host, args.http_port, args.host, args.grpc_port, args.key_file or "off",
    )  # fmt: skip
    try:
        return supervisor.run()
    finally:
        reserved.close()
        if args.key_file is not None:
            args.key_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

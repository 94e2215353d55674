"""Build the CPU image with buildah, run it with podman, and prove it serves; then clean up.

    python -m tests.docker.container_smoke --export-dir artifacts/export \
        --sample samples/sneaker.png --expect Sneaker --report smoke.json

Test tooling, not part of the image: tests/docker/test_container.py runs it (pytest -m
container). Run it from the repository root, as a module, so that `tests.support.servers` imports.

Runs with root, buildah, podman, runc and debootstrap (scripts/test-tools.sh installs them)
and ~10 GB free disk. Nothing is pulled: the base image is made here with debootstrap and
tagged as the FROM name, wheels come from a wheelhouse made here with `pip download`.
Everything (storage root, rootfs, wheelhouse, containers, images) lives in one temp dir,
deleted at the end whether the run passed or not.

Steps and what is measured: debootstrap, wheelhouse, image build (docker/build.sh with
buildah), `podman run` to a READY model (the image's own healthcheck), a prediction and an
explanation through the published port with the token from the container's key file, an
update to a second version and a rollback inside the running container
(`fashion-serve-rollout`, X-Model-Version of the answers), `podman stop` time and exit
code (SIGTERM must stop it cleanly, well before the 10 s kill), and the peak disk used.
Then the same image once more with RUNTIME=kserve: ready by the same healthcheck, a
prediction (and none without the token) over REST, OIP v2 REST and OIP gRPC through the
published ports, the same model version as TorchServe served, and a clean stop.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.servers import MODEL_NAME, free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/fashion-serve-base:bookworm"
IMAGE = "localhost/fashion-serve:smoke"
CONTAINER = "fashion-serve-smoke"
KSERVE_CONTAINER = "fashion-serve-smoke-kserve"  # the same image with RUNTIME=kserve
KSERVE_GRPC_PORT = 7070  # in the container (docker/entrypoint.sh, EXPOSE)
KEY_FILE = "/home/model-server/run/key_file.json"
REQUIRED_TOOLS = ("buildah", "podman", "runc", "debootstrap")
MIN_FREE_GB = 10
READY_TIMEOUT_S = 180
MAX_CLEAN_STOP_S = 8.0  # podman stop kills after 10 s: a clean stop finishes well before
BYTES_PER_GB = 1e9


def missing_requirements(work_parent: Path) -> str | None:
    """Why the smoke test cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (buildah/podman with vfs storage and chroot isolation)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/test-tools.sh installs them)"
    free_gb = shutil.disk_usage(work_parent).free / BYTES_PER_GB
    if free_gb < MIN_FREE_GB:
        return f"only {free_gb:.1f} GB free under {work_parent}; the build needs ~{MIN_FREE_GB} GB"
    return None


class DiskPeak:
    """Samples used disk space under a path in the background; `peak_gb` is the growth."""

    def __init__(self, path: Path, interval_s: float = 1.0) -> None:
        self.path, self.interval_s = path, interval_s
        self.start_used = shutil.disk_usage(path).used
        self.peak_used = self.start_used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_used = max(self.peak_used, shutil.disk_usage(self.path).used)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak_used - self.start_used) / BYTES_PER_GB


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, **kwargs)


class Smoke:
    def __init__(self, work: Path, port: int, grpc_port: int) -> None:
        self.work, self.port, self.grpc_port = work, port, grpc_port
        self.container = CONTAINER  # the one the methods below act on
        storage = [
            "--root", str(work / "storage"),
            "--runroot", str(work / "runroot"),
            "--storage-driver", "vfs",
        ]  # fmt: skip
        self.buildah = ["buildah", *storage]
        self.podman = ["podman", *storage]
        self.timings: dict[str, float] = {}

    def timed(self, name: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = run(command, **kwargs)
        self.timings[name] = round(time.monotonic() - start, 1)
        return result

    def make_base_image(self) -> None:
        rootfs = self.work / "rootfs"
        self.timed(
            "debootstrap_s",
            [
                "debootstrap", "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm", str(rootfs),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
        run([*self.podman, "import", "-", BASE_IMAGE], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap rootfs failed")
        shutil.rmtree(rootfs)

    def make_wheelhouse(self) -> Path:
        wheelhouse = self.work / "wheelhouse"
        self.timed(
            "wheelhouse_s",
            [
                # torch.txt names PyTorch's CPU index: where it cannot be reached, one retry
                # per package instead of five with back-off sleeps (minutes over 35 wheels).
                sys.executable, "-m", "pip", "download", "-q", "--retries", "1",
                "-d", str(wheelhouse),
                "-r", str(REPO_ROOT / "docker" / "torch.txt"),
                "-r", str(REPO_ROOT / "docker" / "requirements.txt"),
            ],
        )  # fmt: skip
        return wheelhouse

    def build(self, export_dir: Path, wheelhouse: Path) -> None:
        env = dict(os.environ, CONTAINER_ENGINE=" ".join(self.buildah), TMPDIR=str(self.work))
        self.timed(
            "build_s",
            [
                str(REPO_ROOT / "docker" / "build.sh"), "cpu",
                "--tag", IMAGE,
                "--export-dir", str(export_dir),
                "--wheelhouse", str(wheelhouse),
                "--base-image", BASE_IMAGE,
                "--", "--isolation", "chroot", "--pull=never",
            ],
            env=env,
        )  # fmt: skip
        size = run(
            [*self.podman, "image", "inspect", "--format", "{{.Size}}", IMAGE],
            capture_output=True,
        ).stdout
        self.image_gb = round(int(size.strip()) / BYTES_PER_GB, 2)

    def start(self, container: str = CONTAINER, runtime: str = "torchserve") -> None:
        """`podman run` the image as `container` with RUNTIME=`runtime`; returns once the
        image's own healthcheck passes."""
        self.container = container
        publish = ["--publish", f"127.0.0.1:{self.port}:8080"]
        if runtime == "kserve":
            publish += ["--publish", f"127.0.0.1:{self.grpc_port}:{KSERVE_GRPC_PORT}"]
        prefix = "" if runtime == "torchserve" else f"{runtime}_"
        start = time.monotonic()
        run(
            [
                *self.podman, "run", "--detach", "--name", container,
                "--runtime", "runc",
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
                "--env", f"RUNTIME={runtime}",
                *publish,
                IMAGE,
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.timings[f"{prefix}run_s"] = round(time.monotonic() - start, 1)
        deadline = start + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            # The image's own HEALTHCHECK command (it follows the container's RUNTIME): exit 0
            # once the model has a READY worker (TorchServe) or answers ready (KServe).
            check = subprocess.run(
                [*self.podman, "exec", container, "fashion-serve-healthcheck"],
                capture_output=True,
                text=True,
            )
            if check.returncode == 0:
                self.timings[f"{prefix}start_to_ready_s"] = round(time.monotonic() - start, 1)
                return
            state = self.container_state()
            if state != "running":
                raise RuntimeError(f"container is {state}, not running:\n{self.logs()}")
            time.sleep(1)
        raise RuntimeError(f"no READY worker within {READY_TIMEOUT_S} s:\n{self.logs()}")

    def container_state(self) -> str:
        return subprocess.run(
            [*self.podman, "inspect", "--format", "{{.State.Status}}", self.container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def logs(self) -> str:
        result = subprocess.run(
            [*self.podman, "logs", self.container], capture_output=True, text=True, check=False
        )
        return (result.stdout + result.stderr)[-4000:]

    def inference_key(self) -> str:
        keys = run(
            [*self.podman, "exec", self.container, "cat", KEY_FILE], capture_output=True
        ).stdout
        return json.loads(keys)["inference"]["key"]

    def answered_by(self, body: bytes, token: str) -> str | None:
        """X-Model-Version of a prediction's answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/predictions/{MODEL_NAME}",
            data=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Authorization": f"Bearer {token}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers.get("X-Model-Version")

    def post(
        self, path: str, body: bytes, token: str | None, content_type: str | None = None
    ) -> tuple[int, dict | str]:
        """(status, JSON answer or the error's text); the answer's headers in last_headers."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=body,
            headers={"Content-Type": content_type or "application/octet-stream"},
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.last_headers = response.headers
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def get_text(self, path: str) -> tuple[int, str]:
        """GET without a token: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def stop(self) -> tuple[float, int]:
        start = time.monotonic()
        run([*self.podman, "stop", "--time", "10", self.container], stdout=subprocess.DEVNULL)
        stop_s = round(time.monotonic() - start, 1)
        exit_code = run(
            [*self.podman, "inspect", "--format", "{{.State.ExitCode}}", self.container],
            capture_output=True,
        ).stdout.strip()
        return stop_s, int(exit_code)

    def cleanup(self) -> None:
        for command in (
            [*self.podman, "rm", "--all", "--force"],
            [*self.podman, "rmi", "--all", "--force"],
            [*self.buildah, "rm", "--all"],
        ):
            subprocess.run(command, capture_output=True, check=False)
        # vfs leaves read-only dirs and mounts nothing here; a plain recursive delete works.
        shutil.rmtree(self.work, ignore_errors=True)


def check_serving(smoke: Smoke, sample: Path, expect: str | None) -> dict:
    """Predict and explain the sample through the published port; returns what was seen."""
    image_bytes = sample.read_bytes()
    token = smoke.inference_key()
    checks: dict = {}

    status, _ = smoke.post(f"/predictions/{MODEL_NAME}", image_bytes, token=None)
    checks["no_token_status"] = status
    if status == 200:
        raise AssertionError("a prediction without a token was answered: token auth is off")

    status, prediction = smoke.post(f"/predictions/{MODEL_NAME}", image_bytes, token)
    if status != 200 or not isinstance(prediction, dict):
        raise AssertionError(f"prediction failed: {status} {prediction}")
    top_class = max(prediction, key=prediction.get)
    checks["prediction"] = prediction
    checks["top_class"] = top_class
    if len(prediction) != 5 or not 0.0 < sum(prediction.values()) <= 1.0 + 1e-6:
        raise AssertionError(f"expected 5 classes with probabilities, got {prediction}")
    if expect is not None and top_class != expect:
        raise AssertionError(f"{sample.name}: predicted {top_class!r}, expected {expect!r}")

    status, explanation = smoke.post(f"/explanations/{MODEL_NAME}", image_bytes, token)
    if status != 200 or not isinstance(explanation, dict):
        raise AssertionError(f"explanation failed: {status} {explanation}")
    missing = {"target", "target_name", "attributions", "heatmap_png"} - explanation.keys()
    if missing:
        raise AssertionError(f"explanation lacks {sorted(missing)}: keys {sorted(explanation)}")
    checks["explanation_target"] = explanation["target_name"]
    return checks


def check_update(smoke: Smoke, export_dir: Path, sample: Path) -> dict:
    """The documented container update: archive on the host, put it in the store, swap with
    fashion-serve-rollout inside the container, then roll back."""
    from tests.support.versions import next_version_export  # torch: only for this step

    image_bytes = sample.read_bytes()
    token = smoke.inference_key()
    old_version = smoke.answered_by(image_bytes, token)
    new_version = next_version_export(export_dir, smoke.work / "export-next")
    stage = smoke.work / "stage"
    env = dict(os.environ, MODEL_STORE=str(stage))
    run([str(REPO_ROOT / "scripts" / "archive.sh"), str(smoke.work / "export-next")], env=env)
    mar = f"{MODEL_NAME}-{new_version}.mar"
    store = "/home/model-server/model-store"
    run([*smoke.podman, "cp", str(stage / f"{MODEL_NAME}.mar"), f"{smoke.container}:{store}/{mar}"])
    rollout = [*smoke.podman, "exec", smoke.container, "fashion-serve-rollout"]
    start = time.monotonic()
    run([*rollout, "update", "--mar", mar])
    smoke.timings["update_s"] = round(time.monotonic() - start, 1)
    after_update = smoke.answered_by(image_bytes, token)
    start = time.monotonic()
    run([*rollout, "rollback"])
    smoke.timings["rollback_s"] = round(time.monotonic() - start, 1)
    after_rollback = smoke.answered_by(image_bytes, token)
    versions = {
        "before": old_version,
        "after_update": after_update,
        "after_rollback": after_rollback,
    }
    if (after_update, after_rollback) != (new_version, old_version):
        raise AssertionError(
            f"expected {old_version} -> {new_version} -> {old_version}: {versions}"
        )
    return {"versions": versions}


def check_kserve(smoke: Smoke, sample: Path, expect: str | None) -> dict:
    """The image with RUNTIME=kserve (started and healthy): REST, OIP v2 REST and OIP gRPC
    through the published ports, with the token from the container's key file."""
    image_bytes = sample.read_bytes()
    token = smoke.inference_key()
    checks: dict = {}
    path = f"/predictions/{MODEL_NAME}"
    checks["no_token_status"] = smoke.post(path, image_bytes, token=None)[0]
    if checks["no_token_status"] == 200:
        raise AssertionError("kserve: a prediction without a token was answered")
    status, prediction = smoke.post(path, image_bytes, token)
    if status != 200 or not isinstance(prediction, dict) or len(prediction) != 5:
        raise AssertionError(f"kserve: prediction failed: {status} {prediction}")
    checks["top_class"] = max(prediction, key=prediction.get)
    checks["model_version"] = smoke.last_headers.get("X-Model-Version")
    if expect is not None and checks["top_class"] != expect:
        raise AssertionError(f"kserve: predicted {checks['top_class']!r}, expected {expect!r}")

    image_b64 = base64.b64encode(image_bytes).decode("ascii")
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [image_b64]}
    body = json.dumps({"id": "smoke", "inputs": [tensor]}).encode()
    status, answer = smoke.post(
        f"/v2/models/{MODEL_NAME}/infer", body, token, content_type="application/json"
    )
    if status != 200 or not isinstance(answer, dict):
        raise AssertionError(f"kserve: OIP v2 infer failed: {status} {answer}")
    outputs = {output["name"]: output for output in answer["outputs"]}
    checks["v2_classes"] = outputs["classes"]["data"]
    # Prometheus scrapes the REST port without a token, as TorchServe's metrics port.
    status, metrics = smoke.get_text("/metrics")
    checks["metrics_status"] = status
    if status != 200 or "# TYPE" not in metrics:
        raise AssertionError(f"kserve: /metrics answered {status}: {metrics[:300]}")
    checks["grpc"] = check_grpc(f"127.0.0.1:{smoke.grpc_port}", token, image_bytes)
    return checks


def check_grpc(address: str, token: str, image_bytes: bytes) -> dict:
    """OIP gRPC through the published port: open health, token on the rest, a prediction."""
    import grpc  # kserve's stubs, from the dev environment running this test
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as oip
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    checks: dict = {}
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        try:
            checks["live"] = stub.ServerLive(oip.ServerLiveRequest(), timeout=30).live
            try:
                stub.ModelReady(oip.ModelReadyRequest(name=MODEL_NAME), timeout=30)
                checks["no_token"] = "answered"
            except grpc.RpcError as error:
                checks["no_token"] = error.code().name
            metadata = [("authorization", f"Bearer {token}")]
            tensor = oip.ModelInferRequest.InferInputTensor(
                name="images", datatype="BYTES", shape=[1],
                contents={"bytes_contents": [image_bytes]},
            )  # fmt: skip
            request = oip.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])
            answer = stub.ModelInfer(request, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            raise AssertionError(f"kserve: gRPC on {address} failed: {error}") from error
        checks["outputs"] = sorted(output.name for output in answer.outputs)
    if not checks["live"] or checks["no_token"] != "UNAUTHENTICATED":
        raise AssertionError(f"kserve: gRPC health or token check failed: {checks}")
    return checks


def smoke_test(
    export_dir: Path, sample: Path, expect: str | None, port: int, grpc_port: int
) -> dict:
    work_parent = Path(os.environ.get("SMOKE_WORKDIR", "/var/tmp"))
    reason = missing_requirements(work_parent)
    if reason:
        return {"skipped": reason}
    work = Path(tempfile.mkdtemp(prefix="fashion-serve-smoke.", dir=work_parent))
    smoke = Smoke(work, port, grpc_port)
    disk = DiskPeak(work_parent)
    report: dict = {"work_dir": str(work), "passed": False}
    try:
        smoke.make_base_image()
        wheelhouse = smoke.make_wheelhouse()
        smoke.build(export_dir, wheelhouse)
        report["image_gb"] = smoke.image_gb
        smoke.start()
        report.update(check_serving(smoke, sample, expect))
        report.update(check_update(smoke, export_dir, sample))
        stop_s, exit_code = smoke.stop()
        report["stop_s"], report["stop_exit_code"] = stop_s, exit_code
        report["container_log_tail"] = smoke.logs()[-1500:]
        if stop_s > MAX_CLEAN_STOP_S or exit_code == 137:
            raise AssertionError(f"podman stop took {stop_s} s, exit {exit_code}: SIGTERM ignored")

        smoke.start(KSERVE_CONTAINER, runtime="kserve")
        kserve = report["kserve"] = check_kserve(smoke, sample, expect)
        kserve["stop_s"], kserve["stop_exit_code"] = smoke.stop()
        kserve["container_log_tail"] = smoke.logs()[-1500:]
        if kserve["stop_s"] > MAX_CLEAN_STOP_S or kserve["stop_exit_code"] != 0:
            raise AssertionError(
                f"kserve: podman stop took {kserve['stop_s']} s, exit {kserve['stop_exit_code']}"
            )
        report["passed"] = True
    except (subprocess.CalledProcessError, RuntimeError, AssertionError) as error:
        report["error"] = str(error)
        report.setdefault("container_log_tail", smoke.logs()[-3000:])
    finally:
        smoke.cleanup()
        report["timings"] = smoke.timings
        report["disk_peak_gb"] = round(disk.stop(), 1)
        report["left_behind"] = work.exists()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=REPO_ROOT / "artifacts" / "export",
        help="model.pt (default artifacts/export)",
    )
    parser.add_argument(
        "--sample", type=Path, default=REPO_ROOT / "samples" / "sneaker.png", help="image to send"
    )
    parser.add_argument("--expect", help="class name the sample must be predicted as")
    parser.add_argument(
        "--port", type=int, default=0, help="host port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=0,
        help="host port on 127.0.0.1 for the KServe runtime's gRPC (default: a free one)",
    )
    parser.add_argument("--report", type=Path, help="also write the report here as JSON")
    args = parser.parse_args()

    free = [port for port in free_ports(3) if port not in (args.port, args.grpc_port)]
    port = args.port or free.pop()
    grpc_port = args.grpc_port or free.pop()
    report = smoke_test(args.export_dir, args.sample, args.expect, port, grpc_port)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)
    if "skipped" in report:
        return 0
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

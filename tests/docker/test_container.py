"""The CPU image, built with buildah and run with podman, serves the model on either runtime
(container_smoke.py): TorchServe, then RUNTIME=kserve.

Several minutes and ~7 GB of disk; skips without root, buildah, podman, runc, debootstrap
or ~10 GB free. Run by hand: python -m tests.docker.container_smoke --help
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_MODULE = "tests.docker.container_smoke"  # run as a module from REPO_ROOT
SAMPLES = REPO_ROOT / "samples"
# Trousers are FashionMNIST's easiest class: even a one-epoch model gets them right.
SAMPLE = "trouser.png"
SMOKE_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def model_and_expectation(request) -> tuple[Path, str | None]:
    """A briefly trained export and the sample's true class; untrained (no check) without data."""
    try:
        export_dir = request.getfixturevalue("export_dir")
    except pytest.skip.Exception:
        return request.getfixturevalue("tiny_export_dir"), None
    labels = json.loads((SAMPLES / "index.json").read_text())
    return export_dir, labels[SAMPLE]["class_name"]


@pytest.mark.container
@pytest.mark.slow
def test_image_builds_serves_and_stops_cleanly(model_and_expectation, tmp_path):
    export_dir, expected_class = model_and_expectation
    report_path = tmp_path / "smoke.json"
    command = [
        sys.executable, "-m", SMOKE_MODULE,
        "--export-dir", str(export_dir),
        "--sample", str(SAMPLES / SAMPLE),
        "--report", str(report_path),
    ]  # fmt: skip
    if expected_class:
        command += ["--expect", expected_class]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S
    )
    if not report_path.exists():
        pytest.fail(
            f"smoke test wrote no report (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    report = json.loads(report_path.read_text())
    if "skipped" in report:
        pytest.skip(report["skipped"])
    assert report["passed"], f"{report.get('error')}\n{result.stdout[-3000:]}"
    assert report["no_token_status"] == 400
    versions = report["versions"]  # an update and a rollback inside the running container
    assert versions["after_update"] != versions["before"] == versions["after_rollback"]
    assert report["stop_exit_code"] != 137 and report["stop_s"] < 8
    # The same image and archive on the KServe runtime: tokens on REST and gRPC, the same
    # model version, and SIGTERM stops the supervisor and its workers with exit 0.
    kserve = report["kserve"]
    assert kserve["no_token_status"] == 401
    assert kserve["grpc"]["no_token"] == "UNAUTHENTICATED"
    assert kserve["grpc"]["outputs"] == ["classes", "probabilities"]
    assert kserve["model_version"] == versions["before"]
    assert kserve["stop_exit_code"] == 0 and kserve["stop_s"] < 8
    assert not report["left_behind"]

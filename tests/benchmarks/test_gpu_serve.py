"""benchmarks.gpu_serve end to end: a serve bundle packed here (fast xz, this venv's Python),
unpacked, and the archive served from it by the real TorchServe: on the CPU here, on CUDA
where there is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.gpu_serve import ARCHIVE, SUMMARY_FILE
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHECKS = {"samples_answered_as_on_cpu", "every_load_answer_valid", "workers_survived"}


@pytest.fixture(scope="module")
def serve_bundle(tiny_export_dir, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("serve") / "bundle"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = dict(os.environ, VENV=sys.prefix, EXPORT_DIR=str(tiny_export_dir), BUNDLE=str(bundle),
               GPU_PYTHON=python, XZ_LEVEL="0", MAX_MIB="200")  # fmt: skip
    script = REPO_ROOT / "benchmarks" / "gpu_bundle.sh"
    result = subprocess.run([str(script), "serve"], capture_output=True, text=True, env=env,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return bundle


def test_serve_bundle_holds_the_runtime_the_frontend_and_the_archive(serve_bundle):
    assert sorted(p.name for p in serve_bundle.iterdir()) == ["model_store", "python-version",
                                                              ARCHIVE]  # fmt: skip
    assert [p.name for p in (serve_bundle / "model_store").iterdir()] == ["fashion-cnn.mar"]
    listing = subprocess.run(["tar", "-tJf", str(serve_bundle / ARCHIVE)], capture_output=True,
                             text=True, check=True).stdout.splitlines()  # fmt: skip
    for path in ("java-runtime/bin/java", "frontend/META-INF/MANIFEST.MF",
                 "site/ts/model_server.py", "site/captum/attr/__init__.py",
                 "packages/matplotlib/__init__.py"):  # fmt: skip
        assert path in listing, path
    natives = [p for p in listing if p.startswith("frontend/META-INF/native/") and p[-1] != "/"]
    assert natives and all("osx" not in p and "windows" not in p for p in natives)


def run_serve(bundle, device: str, out) -> tuple[subprocess.CompletedProcess, dict]:
    command = [sys.executable, "-m", "benchmarks.gpu_serve", "--device", device,
               "--bundle", str(bundle), "--out", str(out), "--seconds", "1",
               "--concurrency", "1", "4", "--explain-concurrency", "2"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "handler"))
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                            timeout=600)  # fmt: skip
    summary = json.loads((out / SUMMARY_FILE).read_text()) if (out / SUMMARY_FILE).exists() else {}
    return result, summary


def assert_served(result, summary, device: str) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == summary
    assert set(summary["checks"]) == CHECKS | {f"workers_on_{device}"}
    assert summary["passed"] and all(summary["checks"].values())
    assert summary["answers"]["samples"] == 10 and summary["answers"]["bad_image_status"] == 400
    assert [w["gpu"] for w in summary["workers"]] == [device == "cuda"] * len(summary["workers"])
    points = summary["load"]["predictions"] + summary["load"]["explanations"]
    assert [p["concurrency"] for p in points] == [1, 4, 2]
    for point in points:
        assert point["statuses"] == {"200": point["requests"]} and point["requests"] > 0
        assert point["requests_per_s"] > 0 and 0 < point["p50_ms"] <= point["p99_ms"]


def test_serving_from_the_bundle_on_cpu_checks_and_measures(serve_bundle, tmp_path):
    result, summary = run_serve(serve_bundle, "cpu", tmp_path / "out")
    assert_served(result, summary, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_serving_from_the_bundle_puts_the_workers_on_cuda(serve_bundle, tmp_path):
    result, summary = run_serve(serve_bundle, "cuda", tmp_path / "out")
    assert_served(result, summary, "cuda")
    assert summary["environment"]["gpu"]


def test_a_bundle_for_another_python_is_refused_with_the_fix(tmp_path):
    (tmp_path / ARCHIVE).write_bytes(b"")
    (tmp_path / "python-version").write_text("3.2\n")
    command = [sys.executable, "-m", "benchmarks.gpu_serve", "--bundle", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "packed for Python 3.2" in result.stderr and "GPU_PYTHON=" in result.stderr


def test_a_failing_run_still_writes_its_summary(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "model_store").mkdir(parents=True)
    (bundle / ARCHIVE).write_bytes(b"not an xz archive")
    (bundle / "python-version").write_text(f"{sys.version_info.major}.{sys.version_info.minor}\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.gpu_serve", "--device", "cpu",
               "--bundle", str(bundle), "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["passed"] is False and "ReadError" in summary["error"]
    assert summary["environment"]["device"] == "cpu"


def test_a_missing_bundle_is_named_with_the_fix(tmp_path):
    command = [sys.executable, "-m", "benchmarks.gpu_serve", "--bundle", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "gpu_bundle.sh serve" in result.stderr

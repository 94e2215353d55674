"""python -m benchmarks.reliability against a real TorchServe, with small counts.

The suite starts its own server through scripts/serve.sh (free loopback ports, private run
directory) rather than the shared e2e fixture: it kills a worker and restarts the whole
server, which must not disturb other tests. Its rules live in the suite; this test checks
its verdict, and that each check really ran (the update check swaps versions and back).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REQUESTS = 500


@pytest.fixture(scope="module")
def report(tiny_export_dir, tmp_path_factory) -> dict:
    venv_bin = REPO_ROOT / ".venv" / "bin"
    has_java = (venv_bin / "java").exists() or shutil.which("java") is not None
    if not (venv_bin / "torchserve").exists() or not has_java:
        pytest.skip("TorchServe or Java missing: run scripts/setup.sh")
    out = tmp_path_factory.mktemp("reliability") / "reliability.json"
    command = [
        sys.executable, "-m", "benchmarks.reliability",
        "--export-dir", str(tiny_export_dir),
        "--requests", str(REQUESTS), "--warmup", "100", "--concurrency", "32",
        "--kills", "1", "--kill-after-s", "2", "--kill-load-s", "10",
        "--update-settle-s", "2",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    results["exit_status"] = done.returncode
    return results


def test_every_check_passes_and_the_exit_status_says_so(report):
    checks = ("security", "corpus", "load", "kill", "update", "restart")
    failed = {name: report[name] for name in checks if not report[name]["passed"]}
    assert not failed
    assert report["exit_status"] == 0


def test_each_check_did_its_work(report):
    """A pass must come from work done: the requests sent, the worker killed and replaced,
    the server restarted, the hostile corpus sent."""
    assert report["load"]["valid_200"] == REQUESTS
    (kill,) = report["kill"]["kills"]
    assert kill["requests"] > 0 and kill["new_pid"] not in (None, kill["old_pid"])
    assert report["restart"]["new_frontend_pid"] != report["restart"]["old_frontend_pid"]
    assert report["corpus"]["cases"] >= 25
    assert report["security"]["listening"]
    update = report["update"]
    assert update["failed"] == 0 and update["requests"] > 0
    assert all(count > 0 for count in update["answers_by_version"].values())
    assert update["update_to_new_version_serving_s"] is not None
    assert update["rollback_to_old_version_serving_s"] is not None

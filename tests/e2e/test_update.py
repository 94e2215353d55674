"""scripts/serve.sh update / rollback / status against a real TorchServe of its own (the
shared fixture's version must not move under other tests)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from tests.conftest import make_contract
from tests.e2e.conftest import START_TIMEOUT_S
from tests.e2e.e2e_helpers import SAMPLES_DIR, assert_prediction, post_raw
from tests.support.servers import SCRIPTS_DIR, TorchServe
from training.export import export_model
from training.model import FashionCNN, ModelConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOOD_PNG = (SAMPLES_DIR / "coat.png").read_bytes()
FIRST, SECOND = "1.0", "2.0"


def export_version(version: str, out_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    example = torch.randn(4, 1, 28, 28)
    export_model(FashionCNN(ModelConfig()), make_contract(version=version), out_dir, example)
    return out_dir


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("versions")
    return {v: export_version(v, work / v, seed) for seed, v in enumerate((FIRST, SECOND))}


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory) -> Iterator[TorchServe]:
    run_dir = tmp_path_factory.mktemp("ts_update") / "run"
    with TorchServe(run_dir, exports[FIRST], start_timeout_s=START_TIMEOUT_S) as instance:
        yield instance


def serve_sh(server: TorchServe, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS_DIR / "serve.sh"), *args],
        env=server._script_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def answered_by(server: TorchServe, route: str = "predictions") -> str:
    url = f"{server.inference_url}/{route}/{server.model}"
    response = post_raw(url, server.inference_headers, GOOD_PNG)
    assert response.status_code == 200, response.text
    return response.headers["X-Model-Version"]


def registered_versions(server: TorchServe) -> list[str]:
    url = f"{server.management_url}/models/{server.model}/all"
    described = requests.get(url, headers=server.management_headers, timeout=10).json()
    return sorted(v["modelVersion"] for v in described)


def test_update_serves_the_new_version_and_unregisters_the_old(server, exports):
    assert answered_by(server) == FIRST
    done = serve_sh(server, "update", "--export-dir", str(exports[SECOND]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert answered_by(server) == SECOND
    assert answered_by(server, "explanations") == SECOND
    assert registered_versions(server) == [SECOND]
    assert (server.model_store / f"{server.model}-{SECOND}.mar").is_file()
    history = json.loads((server.run_dir / "versions.json").read_text())
    assert [entry["version"] for entry in history] == [FIRST, SECOND]


def test_update_to_the_version_serving_is_refused(server, exports):
    archive = server.model_store / f"{server.model}-{SECOND}.mar"
    before = archive.read_bytes()
    done = serve_sh(server, "update", "--export-dir", str(exports[SECOND]))
    assert done.returncode == 1
    assert f"version {SECOND} is the one serving already" in done.stderr
    assert archive.read_bytes() == before, "the serving version's archive must stay as it was"
    assert registered_versions(server) == [SECOND]


def test_status_lists_versions_default_and_workers(server):
    done = serve_sh(server, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{server.model} {SECOND} (default)" in done.stdout
    assert "workers READY READY" in done.stdout
    assert f"history (newest last): {FIRST}, {SECOND}" in done.stdout


def test_metrics_count_requests_per_version_when_addressed(server):
    post_raw(
        f"{server.predictions_url}/{SECOND}", server.inference_headers, GOOD_PNG
    ).raise_for_status()
    metrics = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    assert f'model_name="{server.model}",model_version="{SECOND}"' in metrics
    # The workers of the serving version, by name.
    assert f"-{server.model}_{SECOND}" in metrics


def test_rollback_serves_the_previous_version_again(server):
    done = serve_sh(server, "rollback")
    assert done.returncode == 0, done.stdout + done.stderr
    assert answered_by(server) == FIRST
    assert_prediction(post_raw(server.predictions_url, server.inference_headers, GOOD_PNG).json())
    assert registered_versions(server) == [FIRST]
    history = json.loads((server.run_dir / "versions.json").read_text())
    assert [entry["version"] for entry in history] == [FIRST]


def test_rollback_with_nothing_before_is_refused(server):
    done = serve_sh(server, "rollback")
    assert done.returncode == 1
    assert "nothing to roll back to" in done.stderr
    assert answered_by(server) == FIRST


def test_a_restart_serves_the_version_last_made_default(server, exports):
    done = serve_sh(server, "update", "--export-dir", str(exports[SECOND]))
    assert done.returncode == 0, done.stdout + done.stderr
    server.stop()
    server.start()
    assert answered_by(server) == SECOND
    assert registered_versions(server) == [SECOND]

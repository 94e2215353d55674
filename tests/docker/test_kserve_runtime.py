"""The storage layout from docker/kserve/make-storage.sh, served the way KServe's stock
kserve-torchserve runtime serves it (`torchserve --start --model-store=... --ts-config=...`),
answers the KServe v1 protocol. Ports are moved to loopback with TS_* environment
variables (the config enables them, as the runtime needs for TS_SERVICE_ENVELOPE)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from benchmarks.servers import MODEL_NAME, free_ports
from fashion_contract import FASHION_MNIST_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE_STORAGE = REPO_ROOT / "docker" / "kserve" / "make-storage.sh"
SAMPLE = REPO_ROOT / "samples" / "trouser.png"
MODEL = MODEL_NAME
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def kserve_torchserve(tiny_export_dir, tmp_path_factory):
    """TorchServe started with exactly the runtime's arguments on the make-storage.sh layout."""
    work = tmp_path_factory.mktemp("kserve_runtime")
    storage = work / "storage"
    subprocess.run(
        [str(MAKE_STORAGE), "--export-dir", str(tiny_export_dir), str(storage)],
        check=True,
        capture_output=True,
    )
    port, metrics_port, grpc_inference_port, grpc_management_port = free_ports(4)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        TMPDIR=str(work),
        TEMP=str(work),
        LOG_LOCATION=str(work / "logs"),
        METRICS_LOCATION=str(work / "logs"),
        TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{port}",
        TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{port}",
        TS_METRICS_ADDRESS=f"http://127.0.0.1:{metrics_port}",
        TS_GRPC_INFERENCE_ADDRESS="127.0.0.1",
        TS_GRPC_MANAGEMENT_ADDRESS="127.0.0.1",
        TS_GRPC_INFERENCE_PORT=str(grpc_inference_port),
        TS_GRPC_MANAGEMENT_PORT=str(grpc_management_port),
        TS_SERVICE_ENVELOPE="kserve",  # what the runtime sets for protocolVersion v1
        # The runtime mounts the storage at /mnt/models, where config.properties looks.
        TS_METRICS_CONFIG=str(storage / "config" / "metrics.yaml"),
        OMP_NUM_THREADS="1",
    )
    torchserve = [str(Path(sys.executable).parent / "torchserve")]
    start = [
        *torchserve,
        "--start",
        f"--model-store={storage / 'model-store'}",
        f"--ts-config={storage / 'config' / 'config.properties'}",
    ]
    with open(work / "console.log", "wb") as console:
        subprocess.run(
            start, env=env, cwd=work, stdout=console, stderr=subprocess.STDOUT, check=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                response = requests.get(f"{base}/models/{MODEL}", timeout=5)
                if response.ok and any(
                    worker["status"] == "READY" for worker in response.json()[0]["workers"]
                ):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                log = (work / "logs" / "ts_log.log").read_text()[-3000:]
                pytest.fail(f"no READY worker in {START_TIMEOUT_S} s:\n{log}")
            time.sleep(1)
        yield base
    finally:
        subprocess.run([*torchserve, "--stop"], env=env, cwd=work, capture_output=True, timeout=120)


def v1_body() -> dict:
    return {"instances": [{"data": base64.b64encode(SAMPLE.read_bytes()).decode("ascii")}]}


@pytest.mark.e2e
@pytest.mark.slow
def test_v1_predict_through_the_kserve_envelope(kserve_torchserve):
    response = requests.post(f"{kserve_torchserve}/v1/models/{MODEL}:predict", json=v1_body())
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert len(prediction) == 5 and set(prediction) <= set(FASHION_MNIST_CLASSES)


@pytest.mark.e2e
@pytest.mark.slow
def test_v1_explain_through_the_kserve_envelope(kserve_torchserve):
    response = requests.post(f"{kserve_torchserve}/v1/models/{MODEL}:explain", json=v1_body())
    assert response.status_code == 200, response.text
    (explanation,) = response.json()["explanations"]
    assert explanation["target_name"] in FASHION_MNIST_CLASSES
    assert "attributions" in explanation and "heatmap_png" in explanation


@pytest.mark.e2e
@pytest.mark.slow
def test_model_registration_stays_off(kserve_torchserve):
    response = requests.post(f"{kserve_torchserve}/models?url=https://example.com/x.mar")
    assert response.status_code == 405

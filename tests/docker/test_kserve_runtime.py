"""The storage layouts from docker/kserve/make-storage.sh, served the way KServe's stock
kserve-torchserve runtime serves them (`torchserve --start --model-store=... --ts-config=...`
and TS_SERVICE_ENVELOPE as the runtime sets it per protocol), answer KServe v1 and the Open
Inference Protocol (v2). Ports are moved to loopback: with TS_* environment variables for
v1 (its config enables them), in the config file for v2 (which ignores them)."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from fashion_serve.contract import FASHION_MNIST_CLASSES
from tests.support.servers import MODEL_NAME, free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE_STORAGE = REPO_ROOT / "docker" / "kserve" / "make-storage.sh"
SAMPLE = REPO_ROOT / "samples" / "trouser.png"
MODEL = MODEL_NAME
START_TIMEOUT_S = 180


def make_storage(export_dir: Path, storage: Path, protocol: str) -> None:
    subprocess.run(
        [str(MAKE_STORAGE), "--protocol", protocol, "--export-dir", str(export_dir), str(storage)],
        check=True,
        capture_output=True,
    )


def move_to_loopback(config: Path, port: int, metrics_port: int, grpc_ports: list[int]) -> None:
    """The v2 layout ignores TS_* variables, so its ports, and the metrics file the runtime
    would find under /mnt/models, are moved in the file itself."""
    moved = {
        "metrics_config": str(config.parent / "metrics.yaml"),
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port}",
        "metrics_address": f"http://127.0.0.1:{metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_ports[0]),
        "grpc_management_port": str(grpc_ports[1]),
    }
    lines = [line for line in config.read_text().splitlines() if line.split("=", 1)[0] not in moved]
    config.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in moved.items())]) + "\n")


@contextlib.contextmanager
def runtime_torchserve(export_dir: Path, work: Path, protocol: str) -> Iterator[str]:
    """TorchServe started with exactly the runtime's arguments and envelope variable on the
    make-storage.sh layout; yields its base URL."""
    storage = work / "storage"
    make_storage(export_dir, storage, protocol)
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
        # What the runtime sets for protocolVersion v1 / v2.
        TS_SERVICE_ENVELOPE={"v1": "kserve", "v2": "kservev2"}[protocol],
        # The runtime mounts the storage at /mnt/models, where config.properties looks.
        TS_METRICS_CONFIG=str(storage / "config" / "metrics.yaml"),
        OMP_NUM_THREADS="1",
    )
    if protocol == "v2":
        move_to_loopback(
            storage / "config" / "config.properties",
            port,
            metrics_port,
            [grpc_inference_port, grpc_management_port],
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


@pytest.fixture(scope="module")
def kserve_torchserve(tiny_export_dir, tmp_path_factory):
    with runtime_torchserve(tiny_export_dir, tmp_path_factory.mktemp("kserve_v1"), "v1") as url:
        yield url


@pytest.fixture(scope="module")
def kserve_torchserve_v2(tiny_export_dir, tmp_path_factory):
    with runtime_torchserve(tiny_export_dir, tmp_path_factory.mktemp("kserve_v2"), "v2") as url:
        yield url


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


def v2_body(images: list[bytes], request_id: str = "1") -> dict:
    data = [base64.b64encode(image).decode("ascii") for image in images]
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}
    return {"id": request_id, "inputs": [tensor]}


@pytest.mark.e2e
@pytest.mark.slow
def test_v2_infer_and_explain_answered_by_the_handler_despite_the_runtimes_envelope(
    kserve_torchserve_v2,
):
    images = [SAMPLE.read_bytes(), (REPO_ROOT / "samples" / "bag.png").read_bytes()]
    url = f"{kserve_torchserve_v2}/v2/models/{MODEL}"
    response = requests.post(f"{url}/infer", json=v2_body(images), timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "1" and answer["model_name"] == MODEL
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10]
    assert outputs["classes"]["shape"] == [2, 5]
    assert set(outputs["classes"]["data"]) <= set(FASHION_MNIST_CLASSES)

    explained = requests.post(f"{url}/explain", json=v2_body(images[:1]), timeout=60)
    assert explained.status_code == 200, explained.text
    outputs = {o["name"]: o for o in explained.json()["outputs"]}
    assert outputs["attributions"]["shape"] == [1, 28, 28]


@pytest.mark.e2e
@pytest.mark.slow
def test_v2_concurrent_requests_are_batched_each_with_its_own_answer(kserve_torchserve_v2):
    """The stock kservev2 envelope would answer only the first request of a batch."""
    url = f"{kserve_torchserve_v2}/v2/models/{MODEL}/infer"
    image = SAMPLE.read_bytes()
    solo = requests.post(url, json=v2_body([image]), timeout=60).json()

    def ask(i: int) -> dict:
        response = requests.post(url, json=v2_body([image], f"c-{i}"), timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(48)))
    for i, answer in enumerate(answers):
        assert answer["id"] == f"c-{i}"
        assert answer["outputs"][1]["data"] == solo["outputs"][1]["data"]
    fills = [answer["parameters"]["batch_requests"] for answer in answers]
    assert max(fills) > 1, fills

"""What config.properties promises: tokens required, registration only from the model store
and only with the management token, loopback only, Prometheus metrics, quiet logs; and what
the kserve runtime promises the same way (fashion_serve.kserve_server)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.e2e_helpers import SAMPLES_DIR, assert_prediction, post_raw
from tests.support.security import REGISTER_REFUSED
from tests.support.servers import listening_sockets

pytestmark = pytest.mark.e2e

GOOD_PNG = (SAMPLES_DIR / "coat.png").read_bytes()


def test_inference_without_or_with_a_wrong_token_is_refused(server_tiny):
    """TorchServe 0.12.0 answers 400 (not 401) with type InvalidKeyException; the kserve
    runtime 401 Unauthorized, on every route but health and /metrics."""
    server = server_tiny
    status, error_type = server.token_refusal
    refused = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic eDp5"}]
    if server.has_management_api:
        refused.append(server.management_headers)
    for headers in refused:
        for url in (
            server.predictions_url,
            f"{server.inference_url}/v2/models/{server.model}/infer",
        ):
            response = post_raw(url, headers, GOOD_PNG)
            assert response.status_code == status, (url, headers, response.text)
            assert response.json()["type"] == error_type


def test_inference_with_the_token_passes(server_tiny):
    server = server_tiny
    response = post_raw(server.predictions_url, server.inference_headers, GOOD_PNG)
    assert response.status_code == 200, response.text
    assert_prediction(response.json())


def test_management_needs_the_management_token(torchserve_tiny):
    server = torchserve_tiny
    url = f"{server.management_url}/models/{server.model}"
    for headers in ({}, server.inference_headers):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 400, (headers, response.text)
        assert response.json()["type"] == "InvalidKeyException"
    response = requests.get(url, headers=server.management_headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()[0]["modelName"] == server.model


@pytest.mark.parametrize("name", sorted(REGISTER_REFUSED))
def test_registration_from_outside_the_model_store_is_refused(torchserve_tiny, name):
    """enable_model_api=true (for serve.sh update), allowed_urls matches no URL: even the
    management token registers nothing but an archive name from the model store."""
    server = torchserve_tiny
    params = {"url": REGISTER_REFUSED[name], "model_name": "evil", "initial_workers": 1}
    response = requests.post(
        f"{server.management_url}/models",
        params=params,
        headers=server.management_headers,
        timeout=60,
    )
    assert response.status_code == 404, response.text
    assert response.json()["type"] == "ModelNotFoundException", response.text
    listed = requests.get(
        f"{server.management_url}/models", headers=server.management_headers, timeout=10
    ).json()
    assert [m["modelName"] for m in listed["models"]] == [server.model]


def test_a_file_url_into_the_model_store_is_refused_too(torchserve_tiny):
    """Only a bare archive name is looked up in the store; no URL passes allowed_urls."""
    server = torchserve_tiny
    url = f"file://{server.model_store}/{server.model}.mar"
    response = requests.post(
        f"{server.management_url}/models",
        params={"url": url, "model_name": "evil"},
        headers=server.management_headers,
        timeout=60,
    )
    assert response.status_code == 404, response.text
    assert "does not match any allowed URL" in response.json()["message"]


def test_registration_and_unregistration_need_the_management_token(torchserve_tiny):
    server = torchserve_tiny
    base = server.management_url
    register = {"url": f"{server.model}.mar", "model_name": "evil"}
    version = server.describe()[0]["modelVersion"]
    for headers in ({}, server.inference_headers):
        response = requests.post(f"{base}/models", params=register, headers=headers, timeout=10)
        assert response.status_code == 400, (headers, response.text)
        for path in (f"/models/{server.model}", f"/models/{server.model}/{version}"):
            response = requests.delete(base + path, headers=headers, timeout=10)
            assert response.status_code == 400, (headers, path, response.text)
    assert server.workers(), "the model must still be served"


def test_metrics_are_prometheus_text_without_a_token(torchserve_tiny):
    server = torchserve_tiny
    post_raw(server.predictions_url, server.inference_headers, GOOD_PNG).raise_for_status()
    response = requests.get(f"{server.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE ts_inference_requests_total counter" in response.text
    assert f'model_name="{server.model}"' in response.text
    # The worker's per-batch gauges, parsed by the frontend from the worker's [METRICS] lines
    # (a sample appears only once the worker has sent one).
    for gauge in ("PredictionTime",):
        assert f'{gauge}{{ModelName="{server.model}",Level="Model"' in response.text, gauge


def test_every_api_binds_to_loopback_only(torchserve_tiny):
    log = (torchserve_tiny.run_dir / "logs" / "ts_log.log").read_text()
    binds = [line.split("bind to: ")[1] for line in log.splitlines() if "API bind to: " in line]
    assert len(binds) == 3, binds  # inference, management, metrics
    assert all(url.startswith("http://127.0.0.1:") for url in binds), binds


def test_logs_hold_no_per_request_lines(torchserve_tiny):
    """log4j2.xml keeps access, per-request frontend and per-batch worker lines out of the logs."""
    server = torchserve_tiny
    logs = server.run_dir / "logs"
    for _ in range(3):
        post_raw(server.predictions_url, server.inference_headers, GOOD_PNG).raise_for_status()
    assert not (logs / "access_log.log").exists()
    ts_log = (logs / "ts_log.log").read_text()
    assert "Flushing req.cmd" not in ts_log
    assert "/predictions/" not in ts_log
    model_log = (logs / "model_log.log").read_text()
    assert "Loaded fashion" in model_log  # the worker's INFO lines do reach the log
    assert "Backend received inference" not in model_log


def test_the_kserve_runtime_listens_on_loopback_only(kserve_tiny):
    server = kserve_tiny
    pids = [server.frontend_pid(), *(worker["pid"] for worker in server.workers())]
    sockets = listening_sockets(pids)
    assert sockets and all(s.startswith("127.0.0.1:") for s in sockets), sockets
    ports = {int(s.rsplit(":", 1)[1]) for s in sockets}
    assert ports == {server.ports["INFERENCE_PORT"], server.ports["GRPC_INFERENCE_PORT"]}


def test_the_kserve_runtime_key_file_is_private(kserve_tiny):
    key_file = kserve_tiny.run_dir / "key_file.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert set(kserve_tiny.keys()) == {"inference"}  # no management API, no management key
    assert len(kserve_tiny.inference_token) >= 32


def test_the_kserve_model_repository_is_off(kserve_tiny):
    """KServe's repository unload would act on the one worker that answers: refused with any
    key (405), after the token check (401 without one); the model keeps serving."""
    server = kserve_tiny
    url = f"{server.inference_url}/v2/repository/models/{server.model}/unload"
    assert requests.post(url, timeout=10).status_code == 401
    response = requests.post(url, headers=server.inference_headers, timeout=10)
    assert response.status_code == 405 and response.json()["type"] == "MethodNotAllowed"
    assert requests.get(f"{server.inference_url}/v2/health/ready", timeout=10).status_code == 200
    assert post_raw(server.predictions_url, server.inference_headers, GOOD_PNG).ok


@pytest.mark.parametrize("where", ["header", "url", "many headers"])
def test_kserve_refuses_oversized_headers_before_reading_them(kserve_tiny, where):
    """httptools has no bound of its own (a 32 MiB header was once read and answered): the
    request line and headers are capped at 16 KiB and 100 headers, token or not."""
    server = kserve_tiny
    url, headers = server.predictions_url, dict(server.inference_headers)
    if where == "header":
        headers["X-Junk"] = "a" * (64 * 1024)
    elif where == "url":
        url += "?q=" + "a" * (64 * 1024)
    else:
        headers.update({f"X-Junk-{i}": "a" for i in range(120)})
    response = post_raw(url, headers, GOOD_PNG)
    assert response.status_code == 431, response.text[:200]
    assert response.json()["type"] == "RequestHeaderFieldsTooLarge"
    ok = post_raw(server.predictions_url, {**server.inference_headers, "X-Note": "a" * 8000},
                  GOOD_PNG)  # fmt: skip
    assert ok.status_code == 200, ok.text[:200]  # a large token or header still fits


def test_kserve_answers_unknown_routes_with_a_json_error(kserve_tiny):
    server = kserve_tiny
    response = post_raw(f"{server.predictions_url}/99.9", server.inference_headers, GOOD_PNG)
    assert response.status_code == 404
    assert set(response.json()) == {"code", "type", "message"}


def test_kserve_metrics_need_no_token_and_add_up_over_the_workers(kserve_tiny):
    """Requests spread over both worker processes; /metrics (any worker answers it) counts
    every one of them, exactly."""
    server = kserve_tiny
    assert len(server.workers()) == 2

    def count() -> float:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fashion_requests_total{") and 'kind="prediction"' in line
        )

    # Earlier tests' counts reach the files within a flush interval (a second): wait for them.
    before, deadline = count(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(2.5)
        if (now := count()) == before:
            break
        before = now
    sent = 40
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: post_raw(server.predictions_url, server.inference_headers, GOOD_PNG),
            range(sent),
        ))  # fmt: skip
    assert all(a.status_code == 200 for a in answers)
    deadline = time.monotonic() + 10  # counters are flushed at most once a second
    while count() - before < sent and time.monotonic() < deadline:
        time.sleep(0.25)
    assert count() - before == sent

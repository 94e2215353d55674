"""A real Prometheus, started with the shipped scrape config and rules, scraping a real
server that serves known traffic, on each runtime in turn (TorchServe's metrics port; the
kserve runtime's /metrics, summed over its two worker processes): each handler series holds
exactly what was sent, the rules load, and every dashboard query returns data.

Traffic (sent one at a time, so each request is its own batch):
20 sneakers, 2 sneakers on a light background (auto-inverted), 1 large JPEG,
5 explanations of 8 steps, 3 bodies that are not images.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fashion_serve import metrics as fm
from fashion_serve.image import prepare_image
from tests.e2e.e2e_helpers import SAMPLES_DIR, post_raw
from tests.monitoring.prometheus_helpers import DASHBOARD, running_prometheus, tool
from tests.support.servers import KServeRuntime, TorchServe

pytestmark = pytest.mark.e2e

MODEL = "fashion-cnn"
SNEAKERS, LIGHT_SNEAKERS, JPEGS, EXPLANATIONS, BAD_IMAGES, STEPS = 20, 2, 1, 5, 3, 8
INPUT_SIZE = (28, 28)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def traffic_images() -> dict[str, bytes]:
    sneaker = (SAMPLES_DIR / "sneaker.png").read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(sneaker)).convert("L"))
    buffer = io.BytesIO()
    Image.open(io.BytesIO(sneaker)).convert("RGB").resize((300, 300)).save(buffer, "JPEG")
    return {"sneaker": sneaker, "light": png(255 - pixels), "jpeg": buffer.getvalue()}


@pytest.fixture(scope="module", params=[TorchServe, KServeRuntime], ids=["torchserve", "kserve"])
def monitored(request, tiny_export_dir, tmp_path_factory):
    """(server, Prometheus, what was sent and answered); both always stopped."""
    tool("prometheus")  # skip before starting a server when Prometheus is missing
    work = tmp_path_factory.mktemp("monitoring")
    with request.param(work / "run", tiny_export_dir, start_timeout_s=180) as server:
        metrics_port = int(server.metrics_url.rsplit(":", 1)[1])
        with running_prometheus(metrics_port, work / "prometheus") as prom:
            yield server, prom, send_traffic(server)


def send_traffic(server: TorchServe) -> dict:
    images = traffic_images()
    headers = server.inference_headers
    sent = {"predictions": [], "explanations": [], "refusals": []}
    plan = [("sneaker", SNEAKERS), ("light", LIGHT_SNEAKERS), ("jpeg", JPEGS)]
    for name, count in plan:
        for _ in range(count):
            response = post_raw(server.predictions_url, headers, images[name])
            assert response.status_code == 200, response.text[:300]
            sent["predictions"].append((name, response.json()))
            sent["version"] = response.headers["X-Model-Version"]
    for _ in range(EXPLANATIONS):
        response = post_raw(server.explanations_url, {**headers, "X-Steps": str(STEPS)},
                            images["sneaker"])  # fmt: skip
        assert response.status_code == 200, response.text[:300]
        sent["explanations"].append(response.json())
    for _ in range(BAD_IMAGES):
        response = post_raw(server.predictions_url, headers, b"this is not an image")
        assert response.status_code == 400
        sent["refusals"].append(response.json())
    return sent


TOTAL = SNEAKERS + LIGHT_SNEAKERS + JPEGS + EXPLANATIONS + BAD_IMAGES


def test_requests_counted_by_kind_and_version_and_latency_per_batch(monitored):
    """Requests by kind and the version that answered; the latency histogram takes one
    observation per batch, and these requests came one at a time: one batch each."""
    _, prom, sent = monitored
    expected = {
        ("prediction",): SNEAKERS + LIGHT_SNEAKERS + JPEGS + BAD_IMAGES,
        ("explanation",): EXPLANATIONS,
    }
    requests = f'fashion_requests_total{{ModelName="{MODEL}"}}'
    assert prom.wait_for(f"sum by (kind) ({requests})", expected, by=("kind",)) == expected
    by_version = prom.values(f"sum by (version) ({requests})", ("version",))
    assert by_version == {(sent["version"],): TOTAL}
    latency = f'fashion_handler_latency_seconds_count{{ModelName="{MODEL}"}}'
    assert prom.wait_for(latency, expected, by=("kind",)) == expected
    buckets = prom.values(
        f'fashion_handler_latency_seconds_bucket{{ModelName="{MODEL}", le="+Inf"}}', ("kind",)
    )
    assert buckets == expected
    seconds = prom.values(f'fashion_handler_latency_seconds_sum{{ModelName="{MODEL}"}}', ("kind",))
    assert 0 < seconds[("prediction",)] < 60 and 0 < seconds[("explanation",)] < 60


def test_predictions_by_class_and_confidence_band(monitored):
    _, prom, sent = monitored
    expected = Counter()
    for _, answer in sent["predictions"]:
        top_class, probability = next(iter(answer.items()))
        expected[top_class, fm.confidence_band(probability)] += 1
    # The light sneakers are inverted back: the model sees the very pixels of the sneaker.
    sneaker_answers = [answer for name, answer in sent["predictions"] if name != "jpeg"]
    assert all(answer == sneaker_answers[0] for answer in sneaker_answers)
    expr = f'sum by (class, confidence) (fashion_predictions_total{{ModelName="{MODEL}"}}) > 0'
    got = prom.wait_for(expr, dict(expected), by=("class", "confidence"))
    assert got == dict(expected)
    # Every (class, band) series exists from load on, at 0 until used: shares never miss one.
    assert len(prom.query(f'fashion_predictions_total{{ModelName="{MODEL}"}}')) == 10 * 5


def test_refusals_by_code_and_type(monitored):
    _, prom, sent = monitored
    assert {body["type"] for body in sent["refusals"]} == {"InvalidImage"}
    expr = f'fashion_refusals_total{{ModelName="{MODEL}"}}'
    expected = {("400", "InvalidImage"): BAD_IMAGES}
    assert prom.wait_for(expr, expected, by=("code", "type")) == expected


def test_batches_and_frontend_requests(monitored):
    _, prom, _ = monitored
    expected = {(): TOTAL}
    assert prom.wait_for(f'fashion_batches_total{{ModelName="{MODEL}"}}', expected) == expected
    received = prom.values(f'ts_inference_requests_total{{model_name="{MODEL}"}}')
    assert received == expected
    # The frontend's status counters, which FashionServeServerErrors divides.
    statuses = {name: prom.values(f'sum({name}{{job="fashion-serve"}})') for name in
                ("Requests2XX", "Requests4XX")}  # fmt: skip
    assert statuses["Requests4XX"] == {(): BAD_IMAGES}
    assert statuses["Requests2XX"][()] >= TOTAL - BAD_IMAGES


def test_input_drift_signals(monitored):
    _, prom, _ = monitored
    expected = {("png", "exact"): SNEAKERS + LIGHT_SNEAKERS + EXPLANATIONS, ("jpeg", "medium"): 1}
    expr = f'fashion_inputs_total{{ModelName="{MODEL}"}}'
    assert prom.wait_for(expr, expected, by=("format", "size")) == expected
    inverted = prom.values(f'fashion_inputs_auto_inverted_total{{ModelName="{MODEL}"}}')
    assert inverted == {(): LIGHT_SNEAKERS}
    images = traffic_images()
    counts = {"sneaker": SNEAKERS + LIGHT_SNEAKERS + EXPLANATIONS, "jpeg": JPEGS}
    brightness = sum(
        count * prepare_image(images[name], INPUT_SIZE, "auto", 10**8).mean() / 255
        for name, count in counts.items()
    )
    got = prom.values(f'fashion_input_brightness_sum_total{{ModelName="{MODEL}"}}')
    assert got[()] == pytest.approx(brightness, rel=1e-9)


def test_explanation_steps_and_convergence_delta(monitored):
    _, prom, sent = monitored
    expr = f'fashion_explanation_steps_total{{ModelName="{MODEL}"}}'
    assert prom.wait_for(expr, {(): EXPLANATIONS * STEPS}) == {(): EXPLANATIONS * STEPS}
    count = prom.values(f'fashion_explanation_convergence_delta_count{{ModelName="{MODEL}"}}')
    assert count == {(): EXPLANATIONS}
    total = prom.values(f'fashion_explanation_convergence_delta_sum{{ModelName="{MODEL}"}}')
    assert total[()] == pytest.approx(sum(abs(a["delta"]) for a in sent["explanations"]))


def test_training_reference_and_worker_loads(monitored):
    server, prom, _ = monitored
    prior = prom.values(f'fashion_training_class_prior{{ModelName="{MODEL}"}}', ("class",))
    assert len(prior) == 10 and set(prior.values()) == {0.1}  # the tiny contract: uniform
    assert prom.values(f'fashion_training_pixel_mean{{ModelName="{MODEL}"}}') == {(): 0.286}
    loads = prom.values(f'fashion_worker_loads_total{{ModelName="{MODEL}"}}')
    assert loads == {(): len(server.workers())}


def test_every_series_is_labelled_with_the_model_and_scrape_job(monitored):
    _, prom, _ = monitored
    for sample in prom.query('{__name__=~"fashion_.+"}'):
        labels = sample["metric"]
        assert labels["ModelName"] == MODEL and labels["job"] == "fashion-serve", labels


def test_rules_load_and_evaluate(monitored):
    _, prom, _ = monitored
    groups = {group["name"]: group for group in prom.rules()}
    assert set(groups) == {"fashion-serve-signals", "fashion-serve-alerts"}
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown"), rule
    alerts = [rule["name"] for rule in groups["fashion-serve-alerts"]["rules"]]
    assert len(alerts) >= 10


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]  # fmt: skip


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries())
def test_dashboard_query_returns_data(monitored, panel, expr):
    _, prom, _ = monitored
    query = expr.replace("$__rate_interval", "1m").replace("$model", MODEL)
    got = prom.wait_for(query, expected=None, timeout_s=20)  # polls until the rules ran
    assert got, f"{panel}: {query} returned no data"

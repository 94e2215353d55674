"""Predictions and explanations via a real TorchServe (untrained model: formats, not accuracy)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from fashion_serve.contract import FASHION_MNIST_CLASSES
from fashion_serve.metrics import BATCHES, FLUSH_INTERVAL_S, REQUESTS
from tests.e2e.e2e_helpers import (
    SAMPLES_DIR,
    TIMEOUT_S,
    assert_error,
    assert_explanation,
    assert_prediction,
    assert_same_prediction,
    b64,
    post_json,
    post_multipart,
    post_raw,
)
from tests.handler.helpers import encode, noise
from tests.support.servers import model_config

pytestmark = pytest.mark.e2e

SAMPLE = SAMPLES_DIR / "ankle_boot.png"
# A worker sends its counter sums within two flush intervals of a batch (fashion_serve.metrics).
COUNTERS_SETTLE_S = 2 * FLUSH_INTERVAL_S + 0.5


@pytest.fixture(scope="module")
def sample_bytes() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture(scope="module")
def solo_answers(server_tiny) -> dict[str, dict]:
    """Each sample's prediction, sent alone: what every other way of asking must match."""
    server = server_tiny
    answers = {}
    for path in sorted(SAMPLES_DIR.glob("*.png")):
        response = post_raw(server.predictions_url, server.inference_headers, path.read_bytes())
        assert response.status_code == 200, response.text
        answers[path.name] = response.json()
    return answers


def test_raw_bytes_prediction(server_tiny, sample_bytes):
    server = server_tiny
    response = post_raw(server.predictions_url, server.inference_headers, sample_bytes)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert_prediction(response.json())


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda url, h, img: post_multipart(url, h, img), id="multipart-data"),
        pytest.param(lambda url, h, img: post_multipart(url, h, img, "file"), id="multipart-file"),
        pytest.param(lambda url, h, img: post_json(url, h, {"data": b64(img)}), id="json-base64"),
        pytest.param(
            lambda url, h, img: post_json(url, h, {"instances": [{"data": b64(img)}]}),
            id="kserve-v1",
        ),
    ],
)
def test_every_input_form_gives_the_same_prediction(server_tiny, solo_answers, send):
    server = server_tiny
    response = send(server.predictions_url, server.inference_headers, SAMPLE.read_bytes())
    assert response.status_code == 200, response.text
    assert_same_prediction(response.json(), solo_answers[SAMPLE.name])


def test_topk_as_form_field_and_json_field(server_tiny, sample_bytes, solo_answers):
    server = server_tiny
    expected_top3 = dict(list(solo_answers[SAMPLE.name].items())[:3])
    form = post_multipart(server.predictions_url, server.inference_headers, sample_bytes, topk=3)
    assert form.status_code == 200, form.text
    assert_prediction(form.json(), topk=3)
    assert_same_prediction(form.json(), expected_top3)
    body = {"data": b64(sample_bytes), "topk": 3}
    json_answer = post_json(server.predictions_url, server.inference_headers, body)
    assert json_answer.status_code == 200, json_answer.text
    assert_same_prediction(json_answer.json(), expected_top3)


def test_query_parameters_do_not_reach_the_handler(server_tiny, sample_bytes):
    """TorchServe 0.12.0 drops the query string before the handler: `?topk=3` is ignored,
    which is why scripts/call.sh (predict.sh, explain.sh) sends options as headers with a
    raw upload (`X-Topk: 3`) and scripts/client.py as multipart form fields."""
    server = server_tiny
    response = requests.post(
        server.predictions_url + "?topk=3",
        data=sample_bytes,
        headers={**server.inference_headers, "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()) == 5


def test_options_as_headers_with_a_raw_body(server_tiny, sample_bytes):
    """`curl -T file -H 'X-Topk: 3'`: the way to pass options with a raw upload."""
    server = server_tiny
    raw = {**server.inference_headers, "Content-Type": "application/octet-stream"}
    prediction = requests.post(
        server.predictions_url, data=sample_bytes, headers={**raw, "X-Topk": "3"}, timeout=60
    )
    assert prediction.status_code == 200, prediction.text
    assert len(prediction.json()) == 3
    explanation = requests.post(
        server.explanations_url, data=sample_bytes, headers={**raw, "X-Target": "Bag"}, timeout=60
    )
    assert explanation.status_code == 200, explanation.text
    assert explanation.json()["target_name"] == "Bag"
    refused = requests.post(
        server.predictions_url, data=sample_bytes, headers={**raw, "X-Topk": "11"}, timeout=60
    )
    assert refused.status_code == 422 and refused.json()["type"] == "ParameterOutOfRange"


def test_explanation_defaults_to_the_predicted_class(server_tiny, sample_bytes, solo_answers):
    server = server_tiny
    response = post_multipart(server.explanations_url, server.inference_headers, sample_bytes)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_explanation(answer)
    predicted_name, predicted_probability = next(iter(solo_answers[SAMPLE.name].items()))
    assert answer["target_name"] == predicted_name
    assert answer["probability"] == pytest.approx(predicted_probability, abs=1e-4)


@pytest.mark.parametrize(("target", "expected"), [("3", 3), ("Trouser", 1), ("ankle BOOT", 9)])
def test_explanation_for_a_chosen_target(server_tiny, sample_bytes, target, expected):
    server = server_tiny
    response = post_multipart(
        server.explanations_url, server.inference_headers, sample_bytes, target=target
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_explanation(answer)
    assert answer["target"] == expected
    assert answer["target_name"] == FASHION_MNIST_CLASSES[expected]


def test_explanation_from_json_body(server_tiny, sample_bytes):
    server = server_tiny
    body = {"data": b64(sample_bytes), "target": "Sandal"}
    response = post_json(server.explanations_url, server.inference_headers, body)
    assert response.status_code == 200, response.text
    assert response.json()["target_name"] == "Sandal"


def test_the_largest_explanation_request_is_answered_and_no_worker_restarts(server_tiny):
    """As many noisy images as a request may carry: an answer of about 0.28 MB in compact
    JSON (0.4 MB pretty-printed; noise compresses worst), which the frontend must pass
    (max_response_size) rather than drop and restart the worker."""
    server = server_tiny
    count = model_config()["handler"]["max_images_per_request"]
    images = [b64(encode(noise(28, 28, seed=i), "PNG")) for i in range(count)]
    workers = server.ready_worker_pids()
    response = post_json(server.explanations_url, server.inference_headers, {"data": images})
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) > 1 << 18 and len(response.json()) == count
    assert server.ready_worker_pids() == workers


def test_concurrent_requests_each_get_their_own_answer(server_tiny, solo_answers):
    """40 requests from 8 threads (batched by the server) each match the sample's solo answer."""
    server = server_tiny
    names = sorted(solo_answers) * 4
    images = {name: (SAMPLES_DIR / name).read_bytes() for name in solo_answers}

    def ask(name: str):
        return name, post_raw(server.predictions_url, server.inference_headers, images[name])

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, names))
    elapsed = time.monotonic() - start
    assert elapsed < 60, f"40 small requests took {elapsed:.1f}s"
    for name, response in results:
        assert response.status_code == 200, (name, response.text)
        assert_same_prediction(response.json(), solo_answers[name])


def handler_counts(server) -> Counter:
    """The handler's request and batch counters on /metrics, summed over labels and workers."""
    text = requests.get(f"{server.metrics_url}/metrics", timeout=TIMEOUT_S).text
    counts = Counter()
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in (REQUESTS.name, BATCHES.name) and f'ModelName="{server.model}"' in rest:
            counts[name] += float(rest.rsplit(" ", 1)[1])
    return counts


def settled_handler_counts(server) -> Counter:
    """handler_counts once no increment is on its way: two reads a settling time apart agree."""
    counts = handler_counts(server)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(COUNTERS_SETTLE_S)
        later = handler_counts(server)
        if later == counts:
            return counts
        counts = later
    raise AssertionError(f"the handler's counters kept moving: {counts}")


def test_a_batch_mixing_good_bad_and_explain_requests(server_tiny, solo_answers):
    """Sent at once so they share batches: each request gets its own status and kind of answer."""
    server = server_tiny
    before = settled_handler_counts(server)
    good = SAMPLES_DIR / "bag.png"
    jobs = []
    for i in range(4):
        jobs.append(("good", server.predictions_url, good.read_bytes()))
        jobs.append(("bad", server.predictions_url, b"not an image %d" % i))
        jobs.append(("explain", server.explanations_url, good.read_bytes()))
    barrier = threading.Barrier(len(jobs))

    def send(job):
        kind, url, body = job
        barrier.wait(timeout=30)
        return kind, post_raw(url, server.inference_headers, body)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for kind, response in results:
        if kind == "good":
            assert response.status_code == 200, response.text
            assert_same_prediction(response.json(), solo_answers[good.name])
        elif kind == "bad":
            assert_error(response, range(400, 401))
        else:
            assert response.status_code == 200, response.text
            assert_explanation(response.json())
    # The premise: these requests did share batches (batch fill = requests / batches).
    sent = settled_handler_counts(server) - before
    assert sent[REQUESTS.name] == len(jobs), sent
    assert 0 < sent[BATCHES.name] < len(jobs), f"no batch held more than one request: {sent}"

"""Bad requests get a 4xx JSON answer and leave the worker serving (same pid, READY)."""

from __future__ import annotations

import os

import pytest

from tests.e2e.e2e_helpers import (
    SAMPLES_DIR,
    assert_error,
    assert_prediction,
    b64,
    post_json,
    post_multipart,
    post_raw,
)
from tests.support.hostile import png_bomb

pytestmark = pytest.mark.e2e

GOOD_PNG = (SAMPLES_DIR / "sneaker.png").read_bytes()
MAX_REQUEST_SIZE = 1_048_576  # config.properties max_request_size


def send_empty(server):
    return post_raw(server.predictions_url, server.inference_headers, b"")


def send_text(server):
    return post_raw(server.predictions_url, server.inference_headers, b"hello, this is not a PNG")


def send_truncated_png(server):
    truncated = GOOD_PNG[: len(GOOD_PNG) // 2]
    return post_raw(server.predictions_url, server.inference_headers, truncated)


def send_bomb(server):
    return post_raw(server.predictions_url, server.inference_headers, png_bomb(20_000, 20_000))


def send_unknown_target(server):
    return post_multipart(server.explanations_url, server.inference_headers, GOOD_PNG, target="Hat")


def send_target_out_of_range(server):
    return post_multipart(server.explanations_url, server.inference_headers, GOOD_PNG, target="10")


def send_instances_not_a_list(server):
    return post_json(server.predictions_url, server.inference_headers, {"instances": "nope"})


def send_json_without_image(server):
    return post_json(server.predictions_url, server.inference_headers, {"image": 123})


def send_bad_base64(server):
    return post_json(server.predictions_url, server.inference_headers, {"data": "***not base64"})


def send_bad_topk(server):
    return post_multipart(server.predictions_url, server.inference_headers, GOOD_PNG, topk="0")


def send_too_many_instances(server):
    body = {"instances": [{"data": b64(GOOD_PNG)}] * 17}  # handler.max_images_per_request: 16
    return post_json(server.predictions_url, server.inference_headers, body)


def send_one_bad_instance_of_two(server):
    body = {"instances": [{"data": b64(GOOD_PNG)}, {"data": b64(b"not an image")}]}
    return post_json(server.predictions_url, server.inference_headers, body)


BAD_REQUESTS = [
    send_empty,
    send_text,
    send_truncated_png,
    send_bomb,
    send_unknown_target,
    send_target_out_of_range,
    send_instances_not_a_list,
    send_json_without_image,
    send_bad_base64,
    send_bad_topk,
    send_too_many_instances,
    send_one_bad_instance_of_two,
]


@pytest.mark.parametrize("send", BAD_REQUESTS, ids=[f.__name__[5:] for f in BAD_REQUESTS])
def test_bad_input_gets_4xx_json_and_the_worker_keeps_serving(server_tiny, send):
    server = server_tiny
    workers_before = server.workers()
    assert_error(send(server))
    workers_after = server.workers()
    assert [w["pid"] for w in workers_after] == [w["pid"] for w in workers_before]
    assert all(w["status"] == "READY" for w in workers_after), workers_after
    response = post_raw(server.predictions_url, server.inference_headers, GOOD_PNG)
    assert response.status_code == 200, response.text
    assert_prediction(response.json())


def test_upload_over_max_request_size_is_refused_by_the_frontend(server_tiny):
    """Bodies over max_request_size never reach the worker: TorchServe's frontend (Netty)
    answers 413 itself, with an empty body rather than the handler's JSON error; the kserve
    runtime's gate answers 413 with the JSON error, before any route reads the body."""
    server = server_tiny
    workers_before = server.workers()
    oversized = GOOD_PNG + os.urandom(MAX_REQUEST_SIZE + 1024)
    response = post_raw(server.predictions_url, server.inference_headers, oversized)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    if server.runtime == "torchserve":
        assert response.content == b""
    else:
        assert response.json()["type"] == "PayloadTooLarge"
    assert [w["pid"] for w in server.workers()] == [w["pid"] for w in workers_before]
    response = post_raw(server.predictions_url, server.inference_headers, GOOD_PNG)
    assert response.status_code == 200, response.text

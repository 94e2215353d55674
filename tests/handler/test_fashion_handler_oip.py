"""The handler with several images per request and Open Inference Protocol requests, in a
real ts.context.Context without a server."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from fashion_serve import service as fashion_service
from fashion_serve.contract import FASHION_MNIST_CLASSES
from tests.handler.helpers import encode, garment, handle_json, png_bytes, set_requests

EXPLAIN = {"explain": "True"}
DARK = png_bytes()
LIGHT = png_bytes(light_background=True)
WIDE = encode(garment(50, 30), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def oip_request(images: list[bytes], **fields) -> dict:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [len(images)]}
    return {"inputs": [{**tensor, "data": [b64(i) for i in images]}], **fields}


def run_batch(handler, context, requests: list[dict], headers: list[dict] | None = None):
    set_requests(context, headers or [{} for _ in requests])
    responses = handle_json(handler, requests, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    for response in responses:
        json.dumps(response)  # as TorchServe will
    return responses, statuses


def outputs(response: dict) -> dict[str, np.ndarray]:
    """Each output as a numpy array of its declared shape (how OIP clients read them)."""
    return {
        o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(
            o["shape"]
        )
        for o in response["outputs"]
    }


@pytest.fixture(scope="module")
def solo(handler_and_context):
    """Each test image's top-5 answer, asked alone as raw bytes."""
    handler, context = handler_and_context
    answers, _ = run_batch(handler, context, [{"body": DARK}, {"body": LIGHT}, {"body": WIDE}])
    return {DARK: answers[0], LIGHT: answers[1], WIDE: answers[2]}


def test_several_images_in_each_form_match_their_solo_answers(handler_and_context, solo):
    handler, context = handler_and_context
    images = [DARK, LIGHT, WIDE]
    requests = [
        {"body": {"data": [b64(i) for i in images]}},
        {"body": {"instances": [{"data": b64(i)} for i in images]}},
        {"body": oip_request(images, id="x-1")},
    ]
    (as_list, as_kserve, as_oip), statuses = run_batch(handler, context, requests)
    assert statuses == [200, 200, 200]
    expected = [solo[i] for i in images]
    assert as_list == expected
    assert as_kserve == {"predictions": expected}

    assert as_oip["id"] == "x-1" and as_oip["model_name"] == "fashion"
    assert as_oip["model_version"] == handler.service.model_version
    tensors = outputs(as_oip)
    assert tensors["probabilities"].shape == (3, 10)
    assert tensors["classes"].shape == (3, 5)
    for row, answer in enumerate(expected):
        assert list(tensors["classes"][row]) == list(answer)
        for name, probability in answer.items():
            column = FASHION_MNIST_CLASSES.index(name)
            assert tensors["probabilities"][row, column] == pytest.approx(probability, abs=1e-6)


def test_a_bad_image_fails_its_request_by_index_and_never_its_batch_mates(
    handler_and_context, solo
):
    handler, context = handler_and_context
    requests = [
        {"body": {"data": [b64(DARK), b64(b"not an image")]}},
        {"body": DARK},
        {"body": oip_request([DARK, DARK, b"not an image"])},
        {"body": oip_request([LIGHT])},
    ]
    responses, statuses = run_batch(handler, context, requests)
    assert statuses == [400, 200, 400, 200]
    assert responses[0]["type"] == "InvalidImage" and responses[0]["index"] == 1
    assert responses[0]["message"].startswith("Image at index 1 (of 2): ")
    assert responses[1] == solo[DARK]
    assert set(responses[2]) == {"error"} and "index 2 (of 3)" in responses[2]["error"]
    assert list(outputs(responses[3])["classes"][0]) == list(solo[LIGHT])


def test_oip_errors_take_the_protocol_shape_with_the_same_statuses(handler_and_context):
    handler, context = handler_and_context
    requests = [
        {"body": oip_request([DARK], parameters={"topk": 11})},
        {"body": {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [1]}]}},
        {"body": oip_request([DARK] * 17)},
        {"body": oip_request([DARK], outputs=[{"name": "attributions"}])},
        {"body": DARK, "topk": b"11"},
    ]
    responses, statuses = run_batch(handler, context, requests)
    assert statuses == [422, 400, 422, 400, 422]
    for response in responses[:4]:
        assert set(response) == {"error"} and response["error"]
    assert responses[4]["type"] == "ParameterOutOfRange"  # the other routes keep their shape


def test_oip_options_as_parameters_and_requested_outputs(handler_and_context, solo):
    handler, context = handler_and_context
    body = oip_request([DARK, WIDE], parameters={"topk": 2}, outputs=[{"name": "classes"}])
    (response,), _ = run_batch(handler, context, [{"body": body}])
    assert [o["name"] for o in response["outputs"]] == ["classes"]
    classes = outputs(response)["classes"]
    assert classes.shape == (2, 2)
    assert list(classes[1]) == list(solo[WIDE])[:2]


def test_oip_explanations_per_request_in_a_mixed_batch(handler_and_context, solo):
    handler, context = handler_and_context
    requests = [
        {"body": oip_request([DARK, LIGHT], parameters={"steps": 4})},
        {"body": oip_request([DARK], parameters={"target": "Bag", "steps": 4})},
        {"body": oip_request([WIDE])},  # a prediction in the same batch
        {"body": {"instances": [{"data": b64(DARK), "steps": 4}, {"data": b64(WIDE)}]}},
    ]
    headers = [EXPLAIN, EXPLAIN, {}, EXPLAIN]
    responses, statuses = run_batch(handler, context, requests, headers)
    assert statuses == [200, 200, 200, 200]

    first = outputs(responses[0])
    assert first["attributions"].shape == (2, 28, 28)
    predicted = [FASHION_MNIST_CLASSES.index(next(iter(solo[i]))) for i in (DARK, LIGHT)]
    assert list(first["target"]) == predicted
    assert list(first["target_name"]) == [FASHION_MNIST_CLASSES[t] for t in predicted]
    assert first["delta"].shape == (2,) and first["heatmap_png"].shape == (2,)
    assert base64.b64decode(first["heatmap_png"][0])[:8] == b"\x89PNG\r\n\x1a\n"

    second = outputs(responses[1])
    assert list(second["target"]) == [8] and list(second["target_name"]) == ["Bag"]
    assert list(outputs(responses[2])["classes"][0]) == list(solo[WIDE])
    explanations = responses[3]["explanations"]
    assert len(explanations) == 2 and explanations[0]["steps"] == 4  # first instance's options
    # Batch fill is visible per OIP response: 4 requests, 6 images in this batch.
    assert responses[0]["parameters"] == {"batch_requests": 4, "batch_images": 6}


def test_binary_extension_request(handler_and_context, solo):
    handler, context = handler_and_context
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in (DARK, WIDE))
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    json_part = json.dumps(header).encode()
    binary = {"Inference-Header-Content-Length": str(len(json_part))}
    (response, bad), statuses = run_batch(
        handler,
        context,
        [{"body": json_part + raw}, {"body": json_part + raw[:10]}],
        [binary, binary],
    )
    assert statuses == [200, 400]
    classes = outputs(response)["classes"]
    assert [list(row) for row in classes] == [list(solo[DARK]), list(solo[WIDE])]
    assert set(bad) == {"error"}


def test_describe_answers_the_model_metadata(handler_and_context):
    handler, context = handler_and_context
    set_requests(context, [{"describe": "True"}])
    (metadata,) = handle_json(handler, [{}], context)
    assert metadata["name"] == "fashion" and metadata["versions"] == [handler.service.model_version]
    assert metadata["inputs"][0]["datatype"] == "BYTES"


def test_no_heatmap_is_drawn_where_the_request_does_not_want_one(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    drawn = []
    draw = fashion_service.heatmap_base64
    monkeypatch.setattr(fashion_service, "heatmap_base64", lambda *a: drawn.append(1) or draw(*a))
    requests = [
        {"body": oip_request([DARK], outputs=[{"name": "attributions"}, {"name": "delta"}])},
        {"body": oip_request([DARK], parameters={"heatmap": False, "steps": 4})},
        {"body": {"data": b64(DARK), "heatmap": "false", "method": "saliency"}},
        {"body": {"data": b64(DARK), "method": "saliency"}},  # the default: one heatmap
    ]
    responses, statuses = run_batch(handler, context, requests, [EXPLAIN] * len(requests))
    assert statuses == [200] * 4 and len(drawn) == 1
    assert [o["name"] for o in responses[0]["outputs"]] == ["attributions", "delta"]
    assert "heatmap_png" not in outputs(responses[1]) and "attributions" in outputs(responses[1])
    assert responses[2]["heatmap_png"] is None and len(responses[2]["attributions"]) == 28
    assert base64.b64decode(responses[3]["heatmap_png"])[:4] == b"\x89PNG"

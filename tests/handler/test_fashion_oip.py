"""Open Inference Protocol bodies: parsing requests (JSON and binary) and building responses."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from fashion_serve import errors, oip
from tests.handler.helpers import png_bytes

IMAGE = png_bytes()
B64 = base64.b64encode(IMAGE).decode("ascii")


def images_input(data, shape=None, **fields) -> dict:
    tensor = {"name": "images", "datatype": "BYTES", "shape": shape or [len(data)], "data": data}
    return {**tensor, **fields}


def binary_body(header: dict, elements: list[bytes]) -> tuple[bytes, int]:
    """The binary-data extension as tritonclient writes a BYTES input."""
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
    header["inputs"][0].pop("data", None)
    json_part = json.dumps(header).encode()
    return json_part + raw, len(json_part)


def test_json_request_gives_images_options_id_and_outputs():
    body = {
        "id": "req-1",
        "parameters": {"topk": 3, "invert": "false"},
        "inputs": [images_input([B64, B64], parameters={"topk": 2})],
        "outputs": [{"name": "classes"}],
    }
    request = oip.parse_infer_request(body, max_images=4)
    assert request.images == [B64, B64]
    assert request.options == {"topk": 2, "invert": "false"}  # the input's parameters win
    assert request.id == "req-1" and request.outputs == ("classes",)


def test_nested_data_and_shape_n_by_1_are_accepted():
    request = oip.parse_infer_request({"inputs": [images_input([[B64], [B64]], [2, 1])]}, 4)
    assert request.images == [B64, B64]


def test_binary_extension_carries_raw_image_bytes():
    header = {"id": "7", "inputs": [images_input(None, [2])]}
    body, length = binary_body(header, [IMAGE, b"second"])
    request = oip.parse_binary_request(body, length, max_images=4)
    assert request.images == [IMAGE, b"second"] and request.id == "7"
    assert oip.binary_header_length({"Inference-Header-Content-Length": str(length)}) == length
    assert oip.binary_header_length({"Content-Type": "application/json"}) is None


@pytest.mark.parametrize("length", ["²", b"\xff12", "9" * 5000, "-3", ""])
def test_a_binary_header_length_that_is_no_byte_count_is_refused(length):
    with pytest.raises(errors.RequestError) as caught:
        oip.binary_header_length({"Inference-Header-Content-Length": length})
    assert caught.value.code == 400 and "not a byte count" in caught.value.message


def test_a_binary_header_nested_too_deeply_is_refused():
    with pytest.raises(errors.RequestError) as caught:
        oip.parse_binary_request(b"[" * 5000, 5000, max_images=4)
    assert caught.value.code == 400 and "nested too deeply" in caught.value.message


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": [images_input([B64], datatype="FP32")]}, 400, "BYTES"),
        ({"inputs": [images_input([B64], [1, 28])]}, 400, "shape"),
        ({"inputs": [images_input([B64, B64], [3])]}, 400, "[3] but 2 elements"),
        ({"inputs": [images_input([B64] * 5)]}, 422, "at most 4"),
        ({"inputs": [images_input([], [0])]}, 400, "no image"),
        ({"inputs": [images_input([B64, 42])]}, 400, "Element 1"),
        ({"inputs": [images_input([B64]), {"name": "other"}]}, 400, "named 'images'"),
        ({"inputs": [images_input([B64])], "parameters": [1]}, 400, "parameters"),
        ({"inputs": [images_input([B64])], "outputs": ["classes"]}, 400, "outputs"),
    ],
)
def test_bad_requests_say_what_is_wrong(body, code, fragment):
    with pytest.raises(errors.RequestError) as caught:
        oip.parse_infer_request(body, max_images=4)
    assert caught.value.code == code
    assert fragment in caught.value.message
    assert oip.error_body(caught.value) == {"error": caught.value.message}


def test_binary_body_shorter_than_its_header_says_is_refused():
    with pytest.raises(errors.RequestError, match="body has"):
        oip.parse_binary_request(b"{}", 10, max_images=4)
    header = {"inputs": [images_input(None, [1])]}
    body, length = binary_body(header, [IMAGE])
    with pytest.raises(errors.RequestError, match="does not hold"):
        oip.parse_binary_request(body[:-5], length, max_images=4)
    body, length = binary_body({"inputs": [images_input(None, [1])]}, [IMAGE])
    lying = body[:length] + struct.pack("<I", len(IMAGE) + 5) + body[length + 4 :]
    with pytest.raises(errors.RequestError, match="ends inside"):
        oip.parse_binary_request(lying, length, max_images=4)


def test_prediction_outputs_are_typed_shaped_and_flat():
    probabilities = [[0.1] * 10, [0.2] * 10]
    probabilities_out, classes = oip.prediction_outputs(
        probabilities, [["Bag", "Coat"], ["Dress", "Shirt"]]
    )
    assert probabilities_out["datatype"] == "FP32" and probabilities_out["shape"] == [2, 10]
    assert len(probabilities_out["data"]) == 20
    assert classes == {
        "name": "classes",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["Bag", "Coat", "Dress", "Shirt"],
    }


def test_explanation_outputs_are_typed_and_shaped():
    answer = {
        "method": "integrated_gradients",
        "target": 3,
        "target_name": "Dress",
        "probability": 0.5,
        "delta": 0.01,
        "steps": 33,
        "delta_tolerance": 0.05,
        "converged": True,
        "attributions": [[0.0] * 28 for _ in range(28)],
        "heatmap_png": "iVBOR",
    }
    outputs = {o["name"]: o for o in oip.explanation_outputs([answer, answer])}
    assert set(outputs) == set(oip.EXPLANATION_OUTPUTS)
    assert outputs["steps"] == {
        "name": "steps",
        "datatype": "INT32",
        "shape": [2],
        "data": [33, 33],
    }
    assert outputs["converged"]["datatype"] == "BOOL" and outputs["converged"]["data"] == [True] * 2
    assert outputs["attributions"]["shape"] == [2, 28, 28]
    assert len(outputs["attributions"]["data"]) == 2 * 28 * 28
    assert outputs["target"] == {
        "name": "target",
        "datatype": "INT64",
        "shape": [2],
        "data": [3, 3],
    }
    assert outputs["heatmap_png"]["datatype"] == "BYTES"
    assert outputs["method"]["data"] == ["integrated_gradients"] * 2


def test_methods_without_a_convergence_delta_answer_no_delta_tensor():
    answer = {"method": "saliency", "target": 3, "target_name": "Dress", "probability": 0.5,
              "delta": None, "attributions": [[0.0] * 28] * 28, "heatmap_png": "iVBOR"}  # fmt: skip
    names = [o["name"] for o in oip.explanation_outputs([answer])]
    assert set(names) == set(oip.EXPLANATION_OUTPUTS) - {"delta", "steps", "converged"}


def test_response_keeps_the_id_and_only_the_outputs_asked_for():
    request = oip.OipRequest(id="abc", images=[B64], options={}, outputs=("classes",))
    outputs = oip.prediction_outputs([[0.1] * 10], [["Bag"]])
    response = oip.infer_response(request, "fashion-cnn", "1.0", outputs, {"batch_requests": 3})
    assert response["id"] == "abc" and response["model_name"] == "fashion-cnn"
    assert response["model_version"] == "1.0"
    assert [o["name"] for o in response["outputs"]] == ["classes"]
    assert response["parameters"] == {"batch_requests": 3}
    unknown = oip.OipRequest(id=None, images=[B64], options={}, outputs=("attributions",))
    with pytest.raises(errors.RequestError, match="'attributions'"):
        oip.infer_response(unknown, "fashion-cnn", "1.0", outputs)


def test_model_metadata_names_every_tensor():
    metadata = oip.model_metadata("fashion-cnn", "1.0", (1, 28, 28), 10, 16)
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    names = [o["name"] for o in metadata["outputs"]]
    assert names == [*oip.PREDICTION_OUTPUTS, *oip.EXPLANATION_OUTPUTS]
    assert {"name": "attributions", "datatype": "FP32", "shape": [-1, 28, 28]} in metadata[
        "outputs"
    ]
    json.dumps(metadata)

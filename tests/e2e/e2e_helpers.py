"""Request builders and answer checks shared by the e2e tests."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import requests
from PIL import Image

from fashion_serve.contract import FASHION_MNIST_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO_ROOT / "samples"
TIMEOUT_S = 60
ERROR_KEYS = {"code", "type", "message"}


def post_raw(url: str, headers: dict, body: bytes) -> requests.Response:
    return requests.post(
        url,
        data=body,
        headers={**headers, "Content-Type": "application/octet-stream"},
        timeout=TIMEOUT_S,
    )


def post_multipart(
    url: str, headers: dict, image_bytes: bytes, field: str = "data", **options
) -> requests.Response:
    fields = {key: str(value) for key, value in options.items()}
    return requests.post(
        url,
        files={field: ("image.png", image_bytes, "image/png")},
        data=fields,
        headers=headers,
        timeout=TIMEOUT_S,
    )


def post_json(url: str, headers: dict, body) -> requests.Response:
    return requests.post(url, json=body, headers=headers, timeout=TIMEOUT_S)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def assert_prediction(answer, topk: int = 5) -> None:
    """{class_name: probability} with topk known classes, highest first."""
    assert isinstance(answer, dict), answer
    assert len(answer) == topk, answer
    assert set(answer) <= set(FASHION_MNIST_CLASSES), answer
    probabilities = list(answer.values())
    assert all(0.0 <= p <= 1.0 for p in probabilities), answer
    assert probabilities == sorted(probabilities, reverse=True), answer
    assert sum(probabilities) <= 1.0 + 1e-4, answer


def assert_same_prediction(answer: dict, expected: dict, tolerance: float = 1e-4) -> None:
    """Same classes in the same order; probabilities equal up to batching's float noise."""
    assert list(answer) == list(expected), (answer, expected)
    for class_name, probability in expected.items():
        assert math.isclose(answer[class_name], probability, abs_tol=tolerance), (answer, expected)


def assert_error(response: requests.Response, statuses: range = range(400, 500)) -> dict:
    """A 4xx answer with the JSON body {"code", "type", "message"} and code == HTTP status."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["code"] == response.status_code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def assert_explanation(answer: dict, size: tuple[int, int] = (28, 28)) -> None:
    assert {"target", "target_name", "probability", "steps", "delta", "attributions"} <= set(answer)
    assert FASHION_MNIST_CLASSES[answer["target"]] == answer["target_name"]
    assert 0.0 <= answer["probability"] <= 1.0
    assert isinstance(answer["delta"], float) and math.isfinite(answer["delta"])
    rows = answer["attributions"]
    assert len(rows) == size[0] and all(len(row) == size[1] for row in rows)
    assert all(math.isfinite(value) for row in rows for value in row)
    heatmap = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert heatmap.format == "PNG"
    heatmap.load()  # decodes the whole image, not just the header

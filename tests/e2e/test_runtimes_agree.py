"""Both runtimes, one archive: the same request gets the same answer from each — probabilities
within 1e-5, attributions to float rounding, the same 4xx with the same error — because both
hand the body to the same core. Only what a server answers before the core may differ
(tokens, oversized bodies: tests/e2e/test_security.py and test_errors.py say how)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

from tests.e2e.e2e_helpers import SAMPLES_DIR, TIMEOUT_S

pytestmark = pytest.mark.e2e

COAT = (SAMPLES_DIR / "coat.png").read_bytes()
BAG = (SAMPLES_DIR / "bag.png").read_bytes()
B64 = base64.b64encode(COAT).decode()
OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


def oip(images: list[str], **parameters) -> bytes:
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                        "data": images}], "parameters": parameters}  # fmt: skip
    return json.dumps(body).encode()


# (name, route, body, headers): the route relative to the server's inference URL.
REQUESTS = [
    ("raw prediction", "/predictions/fashion-cnn", COAT, OCTET),
    ("topk header", "/predictions/fashion-cnn", BAG, {**OCTET, "X-Topk": "3"}),
    ("json data list", "/predictions/fashion-cnn", json.dumps({"data": [B64, B64]}).encode(), JSON),
    ("kserve v1 instances", "/v1/models/fashion-cnn:predict",
     json.dumps({"instances": [{"data": B64}, {"data": B64}]}).encode(), JSON),
    ("oip infer", "/v2/models/fashion-cnn/infer", oip([B64], topk=2), JSON),
    ("ig explanation", "/explanations/fashion-cnn", COAT,
     {**OCTET, "X-Steps": "16", "X-Target": "Shirt"}),
    ("saliency without heatmap", "/explanations/fashion-cnn", BAG,
     {**OCTET, "X-Method": "saliency", "X-Heatmap": "false"}),
    ("oip explain", "/v2/models/fashion-cnn/explain", oip([B64], steps=8), JSON),
    ("ig explanation, steps auto", "/explanations/fashion-cnn", BAG,
     {**OCTET, "X-Steps": "auto", "X-Delta-Tolerance": "0.001"}),
    ("oip explain, steps auto", "/v2/models/fashion-cnn/explain",
     oip([B64, B64], steps="auto", delta_tolerance=1e-9), JSON),
    ("kserve v1 explain", "/v1/models/fashion-cnn:explain",
     json.dumps({"instances": [{"data": B64}], "method": "input_x_gradient"}).encode(), JSON),
    ("not an image", "/predictions/fashion-cnn", b"not an image", OCTET),
    ("topk out of range", "/predictions/fashion-cnn", COAT, {**OCTET, "X-Topk": "99"}),
    ("unknown target", "/explanations/fashion-cnn", COAT, {**OCTET, "X-Target": "Hat"}),
    ("empty body", "/predictions/fashion-cnn", b"", OCTET),
    ("bad json", "/predictions/fashion-cnn", b'{"data": ', JSON),
    ("17 instances", "/v1/models/fashion-cnn:predict",
     json.dumps({"instances": [{"data": B64}] * 17}).encode(), JSON),
    ("oip bad image", "/v2/models/fashion-cnn/infer", oip([B64, "bm90IGFuIGltYWdl"]), JSON),
    ("oip wrong datatype", "/v2/models/fashion-cnn/infer",
     json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1],
                             "data": [1.0]}]}).encode(), JSON),
]  # fmt: skip


def close(a, b, path: str = "") -> None:
    """Equal JSON, floats to 1e-5 (attributions relative to their scale), heatmaps as PNGs."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), b)
        for key in a:
            if key == "heatmap_png" and a[key] and b[key]:
                assert base64.b64decode(a[key])[:8] == base64.b64decode(b[key])[:8]
            elif key == "attributions" and isinstance(a[key], list):
                x, y = np.array(a[key], dtype=float), np.array(b[key], dtype=float)
                np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * np.abs(x).max())
            elif key in ("delta", "batch_requests", "batch_images"):
                continue  # the delta follows the attributions' rounding; batch fill the load
            else:
                close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        if path.endswith("parameters"):
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize(
    ("name", "route", "body", "headers"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_both_runtimes_answer_alike(torchserve_tiny, kserve_tiny, name, route, body, headers):
    answers = []
    for server in (torchserve_tiny, kserve_tiny):
        response = requests.post(server.inference_url + route, data=body,
                                 headers={**server.inference_headers, **headers},
                                 timeout=TIMEOUT_S)  # fmt: skip
        answers.append((response.status_code, response.json(), response.headers))
    (ts_status, ts_body, ts_headers), (ks_status, ks_body, ks_headers) = answers
    assert ts_status == ks_status, (name, ts_body, ks_body)
    assert ts_status < 500
    assert ts_headers["X-Model-Version"] == ks_headers["X-Model-Version"]
    close(ts_body, ks_body)

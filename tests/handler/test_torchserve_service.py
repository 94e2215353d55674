"""The handler through TorchServe 0.12's own worker code (model loader, Service, response
encoding), in-process: what the frontend would receive, without starting a server."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import ts
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader

from fashion_serve.contract import FASHION_MNIST_CLASSES
from tests.handler.helpers import png_bytes

HANDLER_DIR = Path(__file__).resolve().parents[2] / "handler"


@pytest.fixture(scope="module")
def service(tiny_export_dir, tmp_path_factory):
    """A model dir laid out like an unpacked archive from scripts/archive.sh, on sys.path
    first as the frontend puts it on a worker's PYTHONPATH."""
    model_dir = tmp_path_factory.mktemp("unpacked_mar")
    for path in (HANDLER_DIR / "fashion_handler.py", HANDLER_DIR / "model-config.yaml"):
        shutil.copy(path, model_dir)
    shutil.copytree(
        HANDLER_DIR / "fashion_serve",
        model_dir / "fashion_serve",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(tiny_export_dir / "model.pt", model_dir)
    (model_dir / "MAR-INF").mkdir()
    manifest = {
        "model": {
            "modelName": "fashion",
            "serializedFile": "model.pt",
            "handler": "fashion_handler.py",
            "configFile": "model-config.yaml",
        }
    }
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    sys.path.insert(0, str(model_dir))
    try:
        loaded = TsModelLoader().load(
            "fashion", str(model_dir), "fashion_handler.py", None, 8, None, True, metrics
        )
        loaded.set_cl_socket(None)  # the worker's socket to the frontend; unused here
        yield loaded
    finally:
        sys.path.remove(str(model_dir))


def frontend_request(request_id: str, parameters: dict, headers: dict | None = None) -> dict:
    """A request as otf_message_handler.retrieve_request_batch decodes it from the frontend."""
    return {
        "requestId": request_id.encode(),
        "parameters": [
            {"name": name, "contentType": content_type, "value": value}
            for name, (content_type, value) in parameters.items()
        ],
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in (headers or {}).items()],
    }


def decode_response(message: bytes) -> tuple[int, list[tuple[int, str, str, bytes]]]:
    """create_predict_response's bytes -> (batch code, [(code, phrase, content type, body)])."""

    def take(n: int) -> bytes:
        nonlocal message
        chunk, message = message[:n], message[n:]
        return chunk

    def take_int() -> int:
        return struct.unpack("!i", take(4))[0]

    batch_code = take_int()
    take(take_int())  # batch message
    answers = []
    while (length := take_int()) != -1:
        take(length)  # request id
        content_type = take(take_int()).decode()
        code = take_int()
        phrase = take(take_int()).decode()
        for _ in range(take_int()):  # response headers
            take(take_int())
            take(take_int())
        answers.append((code, phrase, content_type, take(take_int())))
    return batch_code, answers


def test_torchserve_loads_the_handler_module_and_answers_a_mixed_batch(service):
    image = png_bytes()
    batch = [
        frontend_request("r0", {"body": ("", image), "topk": ("", b"3")}),
        frontend_request("r1", {"body": ("application/json", {"instances": "nope"})}),
        frontend_request("r2", {"file": ("image/png", image)}),  # multipart upload
        frontend_request(
            "r3",
            {"body": ("application/json", {"data": base64.b64encode(image).decode()})},
            {"explain": "True"},
        ),
        frontend_request("r4", {"body": ("", image), "target": ("", b"Hat")}, {"explain": "True"}),
    ]
    batch_code, answers = decode_response(service.predict(batch))
    assert batch_code == 200
    codes = [code for code, *_ in answers]
    assert codes == [200, 400, 200, 200, 422]
    assert answers[1][1] == "Bad Request"
    assert all(content_type == "application/json" for _, _, content_type, _ in answers)

    bodies = [json.loads(body) for *_, body in answers]
    assert len(bodies[0]) == 3 and len(bodies[2]) == 5
    assert bodies[1]["type"] == "InvalidJSON" and bodies[1]["code"] == 400
    assert bodies[3]["target_name"] == next(iter(bodies[2]))  # explains the predicted class
    assert len(bodies[3]["attributions"]) == 28
    assert set(bodies[4]) == {"code", "type", "message"}
    assert bodies[4]["code"] == 422 and bodies[4]["type"] == "UnknownTarget"
    # The refusal says what was sent and what is accepted: an index or a class name.
    message = bodies[4]["message"]
    assert "target='Hat' is not a class" in message
    assert f"0..{len(FASHION_MNIST_CLASSES) - 1}" in message
    assert all(name in message for name in FASHION_MNIST_CLASSES)


def test_requests_that_once_failed_their_batch_get_a_4xx_and_leave_it_whole(service):
    """A JSON body nested past Python's recursion limit, a number too long for int() and a
    client's own `describe` header each failed the whole batch (503) or their request (500)."""
    image = png_bytes()
    batch = [
        frontend_request("r0", {"body": ("application/json", b'{"data": ' * 5000)}),
        frontend_request("r1", {"body": ("", b"[" * 5000)}),
        frontend_request("r2", {"body": ("", image), "topk": ("", b"7" * 5000)}),
        frontend_request("r3", {"body": ("", image)}, {"X-Target": "-" + "9" * 5000}),
        frontend_request("r4", {"body": ("", image)}, {"describe": "True"}),
        frontend_request("r5", {"body": ("", image)}),
    ]
    batch_code, answers = decode_response(service.predict(batch))
    assert batch_code == 200
    assert [code for code, *_ in answers] == [400, 400, 422, 422, 200, 200]
    bodies = [json.loads(body) for *_, body in answers]
    assert bodies[0]["type"] == "InvalidJSON" and "nested too deeply" in bodies[0]["message"]
    assert bodies[1]["type"] == "InvalidImage"
    assert (
        bodies[2]["type"] == "ParameterOutOfRange" and "(5,000 characters)" in bodies[2]["message"]
    )
    assert bodies[3]["type"] == "UnknownTarget" and "(5,001 characters)" in bodies[3]["message"]
    assert bodies[4] == bodies[5]  # a prediction, not the model's metadata

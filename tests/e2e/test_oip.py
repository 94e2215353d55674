"""The Open Inference Protocol (KServe v2) against a real TorchServe, through clients nobody
here wrote: tritonclient[http] and the kserve SDK's v2 REST client, with the token header.

Their parsed outputs must match the TorchServe-API answers for the same images.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig
from tritonclient.utils import InferenceServerException

from fashion_serve.contract import DEFAULT_MODEL_NAME, FASHION_MNIST_CLASSES
from tests.e2e.e2e_helpers import SAMPLES_DIR, TIMEOUT_S, assert_same_prediction, post_raw

pytestmark = pytest.mark.e2e

MODEL = DEFAULT_MODEL_NAME
NAMES = ["ankle_boot.png", "bag.png", "trouser.png"]


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(SAMPLES_DIR.glob("*.png"))}


def rest_answers(server, images: dict[str, bytes]) -> dict[str, dict]:
    """Each image's TorchServe-API prediction, asked alone: what protocol answers must match."""
    answers = {}
    for name, image in images.items():
        response = post_raw(server.predictions_url, server.inference_headers, image)
        assert response.status_code == 200, response.text
        answers[name] = response.json()
    return answers


@pytest.fixture(scope="module")
def solo_answers(server_tiny, images) -> dict[str, dict]:
    return rest_answers(server_tiny, images)


@pytest.fixture(scope="module")
def triton_client(server_tiny):
    url = server_tiny.inference_url.removeprefix("http://")
    client = triton.InferenceServerClient(url, concurrency=8, network_timeout=TIMEOUT_S)
    yield client
    client.close()


def triton_input(images: list[bytes], binary: bool) -> triton.InferInput:
    """BYTES [N]: the image bytes with the binary extension, base64 text in JSON."""
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def answers_from(probabilities: np.ndarray, classes: np.ndarray) -> list[dict]:
    """The v2 outputs as TorchServe-API answers: {class name: probability}, top-k order."""
    answers = []
    for row, names in zip(probabilities, classes, strict=True):
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        answers.append({n: float(row[FASHION_MNIST_CLASSES.index(n)]) for n in names})
    return answers


def assert_answers(answers: list[dict], expected: list[dict]) -> None:
    assert len(answers) == len(expected)
    for answer, solo in zip(answers, expected, strict=True):
        assert_same_prediction(answer, dict(list(solo.items())[: len(answer)]))


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json-base64"])
def test_tritonclient_predicts_one_and_several_images(
    server_tiny, triton_client, images, solo_answers, binary
):
    headers = server_tiny.inference_headers
    for names in (NAMES[:1], NAMES):
        batch = [images[n] for n in names]
        result = triton_client.infer(
            MODEL, [triton_input(batch, binary)], request_id="r-42", headers=headers
        )
        response = result.get_response()
        assert response["id"] == "r-42" and response["model_name"] == MODEL
        probabilities = result.as_numpy("probabilities")
        assert probabilities.dtype == np.float32 and probabilities.shape == (len(names), 10)
        assert result.as_numpy("classes").shape == (len(names), 5)
        answers = answers_from(probabilities, result.as_numpy("classes"))
        assert_answers(answers, [solo_answers[n] for n in names])


def test_tritonclient_options_as_parameters_and_named_outputs(
    server_tiny, triton_client, images, solo_answers
):
    result = triton_client.infer(
        MODEL,
        [triton_input([images[n] for n in NAMES], binary=True)],
        parameters={"topk": 2},
        outputs=[triton.InferRequestedOutput("classes", binary_data=False)],
        headers=server_tiny.inference_headers,
    )
    classes = result.as_numpy("classes")
    assert classes.shape == (3, 2) and result.as_numpy("probabilities") is None
    for row, name in zip(classes, NAMES, strict=True):
        assert [c.decode() if isinstance(c, bytes) else c for c in row] == list(solo_answers[name])[
            :2
        ]


def triton_explain(server, tensor, parameters: dict):
    """POST /explain with a body tritonclient builds (it has no method for the route), and
    the result as tritonclient parses it."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], parameters=parameters
    )
    response = requests.post(
        f"{server.inference_url}/v2/models/{MODEL}/explain",
        data=body,
        headers={**server.inference_headers, "Inference-Header-Content-Length": str(json_size)},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return triton.InferenceServerClient.parse_response_body(response.content)


def test_tritonclient_explanations(server_tiny, images, solo_answers):
    """tritonclient builds and parses the bodies; /explain is a route it has no method for."""
    tensor = triton_input([images["bag.png"], images["trouser.png"]], binary=True)
    result = triton_explain(server_tiny, tensor, {"target": "Trouser", "steps": 8})
    attributions = result.as_numpy("attributions")
    assert attributions.dtype == np.float32 and attributions.shape == (2, 28, 28)
    assert np.isfinite(attributions).all()
    assert list(result.as_numpy("target")) == [1, 1]
    assert result.as_numpy("delta").shape == (2,)
    heatmap = base64.b64decode(result.as_numpy("heatmap_png")[0])
    assert heatmap[:8] == b"\x89PNG\r\n\x1a\n"


def test_tritonclient_explanations_with_steps_auto(server_tiny, images):
    """Steps chosen per image to meet a tolerance: the steps each took and whether it met it
    (1e-9 is out of reach within max_ig_steps, so the answer says so)."""
    tensor = triton_input([images["bag.png"]], binary=True)
    for tolerance, converged in ((10.0, True), (1e-9, False)):
        parameters = {"steps": "auto", "delta_tolerance": tolerance}
        result = triton_explain(server_tiny, tensor, parameters)
        assert result.as_numpy("converged").tolist() == [converged]
        assert result.as_numpy("steps").tolist() == [7 if converged else 127]
        assert (abs(result.as_numpy("delta")[0]) <= tolerance) == converged


def test_tritonclient_bad_image_is_a_4xx_naming_its_index(server_tiny, triton_client, images):
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer(
            MODEL,
            [triton_input([images["bag.png"], b"not an image"], binary=True)],
            headers=server_tiny.inference_headers,
        )
    assert refused.value.status() == "400"
    assert "index 1 (of 2)" in refused.value.message()


def test_tritonclient_without_the_token_is_refused(server_tiny, triton_client, images):
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer(MODEL, [triton_input([images["bag.png"]], binary=True)])
    assert refused.value.status() == str(server_tiny.token_refusal[0])


def kserve_request(images: list[bytes], **parameters) -> InferRequest:
    """Options as the input's parameters here (tritonclient's tests use the request's)."""
    tensor = InferInput("images", [len(images)], "BYTES", parameters=parameters or None)
    tensor.set_data_from_numpy(
        np.array([base64.b64encode(i) for i in images], dtype=np.object_), binary_data=False
    )
    return InferRequest(model_name=MODEL, infer_inputs=[tensor], request_id="k-1")


async def kserve_infer(server, request: InferRequest, explain: bool = False) -> InferResponse:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT_S))
    try:
        if not explain:
            return await client.infer(
                server.inference_url, request, MODEL, headers=server.inference_headers
            )
        # The SDK's explain() speaks v1 only; a graph endpoint is posted to as given.
        answer = await client.infer(
            f"{server.inference_url}/v2/models/{MODEL}/explain",
            request,
            headers=server.inference_headers,
            is_graph_endpoint=True,
        )
        return InferResponse.from_rest(answer)
    finally:
        await client.close()


def test_kserve_sdk_predicts_one_and_several_images(server_tiny, images, solo_answers):
    for names in (NAMES[:1], NAMES):
        request = kserve_request([images[n] for n in names], topk=3)
        response = asyncio.run(kserve_infer(server_tiny, request))
        assert response.id == "k-1" and response.model_name == MODEL
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        assert outputs["probabilities"].shape == (len(names), 10)
        assert outputs["classes"].shape == (len(names), 3)
        answers = answers_from(outputs["probabilities"], outputs["classes"])
        assert_answers(answers, [solo_answers[n] for n in names])


def test_kserve_sdk_explanations(server_tiny, images, solo_answers):
    request = kserve_request([images["bag.png"]], steps=8)
    response = asyncio.run(kserve_infer(server_tiny, request, explain=True))
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["attributions"].shape == (1, 28, 28)
    predicted = next(iter(solo_answers["bag.png"]))
    assert list(outputs["target_name"]) == [predicted]
    assert float(outputs["target_probability"][0]) == pytest.approx(
        solo_answers["bag.png"][predicted], abs=1e-4
    )


def test_kserve_sdk_bad_image_is_a_4xx_with_the_protocol_error(server_tiny, images):
    import httpx

    request = kserve_request([images["bag.png"], images["bag.png"], b"\x89PNG broken"])
    with pytest.raises(httpx.HTTPStatusError) as refused:
        asyncio.run(kserve_infer(server_tiny, request))
    assert refused.value.response.status_code == 400
    assert "index 2 (of 3)" in refused.value.response.json()["error"]


def test_concurrent_v2_requests_are_batched_and_each_gets_its_own_answer(
    server_tiny, images, solo_answers
):
    """48 requests sent at once by the kserve SDK's async client: each answer matches its
    image's solo answer, and the worker's batch fill (batch_requests) shows batches."""
    server = server_tiny
    names = sorted(images) * 4

    async def send_all() -> list[InferResponse]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT_S))
        try:
            requests_ = []
            for i, name in enumerate(names):
                request = kserve_request([images[name]])
                request.id = f"c-{i}"
                requests_.append(
                    client.infer(server.inference_url, request, MODEL, server.inference_headers)
                )
            return await asyncio.gather(*requests_)
        finally:
            await client.close()

    fills = []
    for i, (name, response) in enumerate(zip(names, asyncio.run(send_all()), strict=True)):
        assert response.id == f"c-{i}"
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        (answer,) = answers_from(outputs["probabilities"], outputs["classes"])
        assert_answers([answer], [solo_answers[name]])
        fills.append(response.parameters["batch_requests"])
    assert max(fills) > 1, f"no batch held more than one request: {fills}"


def test_model_metadata_on_the_management_api_and_what_v2_does_not_route(torchserve_tiny):
    """TorchServe 0.12 routes only POST .../infer and .../explain under /v2 to the model; the
    handler's OIP metadata is served by the management API's ?customized=true."""
    server = torchserve_tiny
    described = requests.get(
        f"{server.management_url}/models/{MODEL}?customized=true",
        headers=server.management_headers,
        timeout=TIMEOUT_S,
    )
    assert described.status_code == 200, described.text
    metadata = described.json()[0]["customizedMetadata"]
    assert metadata["name"] == MODEL
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in metadata["outputs"]
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", "/v2/health/ready"):
        response = requests.get(
            server.inference_url + path, headers=server.inference_headers, timeout=TIMEOUT_S
        )
        assert response.status_code == 404, (path, response.status_code)

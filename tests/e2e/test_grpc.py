"""OIP gRPC against the kserve runtime, through stock clients with the token: tritonclient.grpc
(raw_input_contents; run in a process of its own, see triton_grpc_calls) and the kserve SDK's
InferenceGRPCClient (typed bytes_contents). TorchServe's OIP gRPC does not serve stock clients
(its proto package is not `inference`, pytorch/serve#3394): the kserve runtime only.

Answers must match the same images' REST answers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from fashion_serve.contract import DEFAULT_MODEL_NAME
from tests.e2e.e2e_helpers import REPO_ROOT, SAMPLES_DIR, TIMEOUT_S, post_raw
from tests.e2e.test_oip import answers_from, assert_answers
from tests.e2e.test_oip import rest_answers as answers_over_rest

pytestmark = pytest.mark.e2e

MODEL = DEFAULT_MODEL_NAME
SIXTEEN = [
    "coat.png", "bag.png", "ankle_boot.png", "dress.png", "pullover.png", "sandal.png",
    "shirt.png", "sneaker.png", "trouser.png", "t-shirt_top.png",
    "bag.png", "coat.png", "dress.png", "sandal.png", "shirt.png", "trouser.png",
]  # fmt: skip


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {name: (SAMPLES_DIR / name).read_bytes() for name in set(SIXTEEN)}


@pytest.fixture(scope="module")
def rest_answers(kserve_tiny, images) -> dict[str, dict]:
    return answers_over_rest(kserve_tiny, images)


@pytest.fixture(scope="module")
def triton(kserve_tiny) -> dict:
    """tritonclient.grpc's calls (triton_grpc_calls) with the 16 images, by call name."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.triton_grpc_calls", kserve_tiny.grpc_address,
         str(kserve_tiny.run_dir / "key_file.json"), *(str(SAMPLES_DIR / n) for n in SIXTEEN)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_one_model_infer_with_16_images_answers_all_16(triton, rest_answers):
    outputs = triton["all"]["outputs"]
    answers = answers_from(np.array(outputs["probabilities"]), np.array(outputs["classes"]))
    assert_answers(answers, [rest_answers[name] for name in SIXTEEN])
    assert triton["all"]["id"] == "t-1"


def test_options_travel_as_request_parameters(triton, rest_answers):
    outputs = triton["topk_2"]["outputs"]
    assert np.array(outputs["classes"]).shape == (1, 2)
    answers = answers_from(np.array(outputs["probabilities"]), np.array(outputs["classes"]))
    assert_answers(answers, [rest_answers[SIXTEEN[0]]])


def test_explanations_through_the_explain_parameter(kserve_tiny, triton, images):
    outputs = triton["explain"]["outputs"]
    attributions = np.array(outputs["attributions"])
    assert attributions.shape == (2, 28, 28) and np.isfinite(attributions).all()
    assert outputs["target"] == [4, 4] and len(outputs["delta"]) == 2  # Coat
    headers = {**kserve_tiny.inference_headers, "X-Steps": "8", "X-Target": "Coat"}
    rest = post_raw(kserve_tiny.explanations_url, headers, images[SIXTEEN[0]]).json()
    np.testing.assert_allclose(attributions[0], rest["attributions"], rtol=1e-3, atol=1e-6)


def test_a_bad_image_and_a_bad_option_are_invalid_argument(triton):
    assert triton["bad_image"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "index 1 (of 2)" in triton["bad_image"]["message"]
    assert triton["topk_99"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "topk=99 is out of range" in triton["topk_99"]["message"]


def test_without_or_with_a_wrong_token_is_unauthenticated_but_health_is_open(triton):
    for call in ("no_token", "wrong_token"):
        assert triton[call]["status"] == "StatusCode.UNAUTHENTICATED", triton[call]
    assert triton["live"]["value"] is True and triton["ready"]["value"] is True
    assert triton["model_ready"]["value"] is True


def test_metadata_over_grpc(triton):
    metadata = triton["metadata"]["value"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": ["-1"]}]
    assert {o["name"] for o in metadata["outputs"]} >= {"probabilities", "classes", "attributions"}


async def sdk_infer(server, blobs: list[bytes], headers: dict):
    """The kserve SDK's gRPC client: BYTES in typed contents (bytes_contents)."""
    client = InferenceGRPCClient(server.grpc_address, timeout=TIMEOUT_S)
    try:
        tensor = InferInput("images", [len(blobs)], "BYTES", data=list(blobs))
        request = InferRequest(model_name=MODEL, infer_inputs=[tensor], request_id="sdk-1")
        assert not request.to_grpc().raw_input_contents  # typed contents, not raw
        return await client.infer(request, headers=tuple(headers.items()))
    finally:
        await client.close()


def test_the_kserve_sdk_sends_typed_contents(kserve_tiny, images, rest_answers):
    names = ["trouser.png", "sandal.png"]
    token = {"authorization": f"Bearer {kserve_tiny.inference_token}"}
    response = asyncio.run(sdk_infer(kserve_tiny, [images[n] for n in names], token))
    assert response.id == "sdk-1"
    outputs = {output.name: output.as_numpy() for output in response.outputs}
    answers = answers_from(outputs["probabilities"], outputs["classes"])
    assert_answers(answers, [rest_answers[n] for n in names])

"""Stock tritonclient.grpc calls against a server, in a process of their own, as JSON.

    python -m tests.e2e.triton_grpc_calls ADDRESS KEY_FILE IMAGE...

tritonclient's generated protobuf module and kserve's register the same `inference.*` names
in protobuf's default pool, so one process cannot import both; the tests (which import
kserve) run this instead and check what it prints: one entry per call, the outputs as lists
or the error's gRPC status and message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

MODEL = "fashion-cnn"


def images_input(blobs: list[bytes]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("images", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return tensor


def outcome(call) -> dict:
    try:
        result = call()
    except InferenceServerException as error:
        return {"status": error.status(), "message": error.message()}
    if isinstance(result, triton_grpc.InferResult):
        response = result.get_response(as_json=True)
        return {
            "status": "OK",
            "id": response.get("id", ""),
            "outputs": {
                o["name"]: np.asarray(result.as_numpy(o["name"])).tolist()
                for o in response["outputs"]
            },
        }
    return {"status": "OK", "value": result}


def main(address: str, key_file: str, *paths: str) -> None:
    key = json.loads(Path(key_file).read_text())["inference"]["key"]
    token = {"authorization": f"Bearer {key}"}
    blobs = [Path(p).read_bytes() for p in paths]
    client = triton_grpc.InferenceServerClient(address)

    def infer(images, headers=token, **parameters):
        return lambda: client.infer(MODEL, [images_input(images)], headers=headers,
                                    parameters=parameters or None, request_id="t-1")  # fmt: skip

    def decoded(value):
        return value.decode() if isinstance(value, bytes) else value

    calls = {
        "all": infer(blobs),
        "topk_2": infer(blobs[:1], topk=2),
        "explain": infer(blobs[:2], explain=True, steps=8, target="Coat"),
        "bad_image": infer([blobs[0], b"not an image"]),
        "topk_99": infer(blobs[:1], topk=99),
        "no_token": infer(blobs[:1], headers={}),
        "wrong_token": infer(blobs[:1], headers={"authorization": "Bearer wrong"}),
        "live": lambda: client.is_server_live(),
        "ready": lambda: client.is_server_ready(),
        "model_ready": lambda: client.is_model_ready(MODEL, headers=token),
        "metadata": lambda: client.get_model_metadata(MODEL, headers=token, as_json=True),
    }
    results = {name: outcome(call) for name, call in calls.items()}
    client.close()
    print(json.dumps(results, default=decoded))


if __name__ == "__main__":
    main(*sys.argv[1:])

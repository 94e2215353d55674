"""Security checks: no call without the right token, no model registered from outside the
store (nor from it without the management token), every listening socket on loopback.

Each runtime is checked on what it has: TorchServe's management API (registration,
scaling); on the kserve runtime, KServe's model repository routes, off for every key (REST
/v2/repository/*: 405; gRPC RepositoryModelLoad/Unload: UNIMPLEMENTED), and its OIP gRPC
service, whose calls need the inference key."""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlencode

import grpc

from tests.support.servers import MODEL_NAME, http_call, listening_sockets

# Registration is on (scripts/serve.sh update), from the model store only: TorchServe must
# refuse each of these with the management token, before fetching or loading anything.
REGISTER_REFUSED = {
    "https URL": "https://example.com/fashion-cnn.mar",
    "file URL outside the store": "file:///etc/passwd",
    "file URL of an archive outside the store": "file:///tmp/evil/fashion-cnn.mar",
    "relative path with ..": f"../{MODEL_NAME}.mar",
    "archive name with ..": f"sub/../{MODEL_NAME}.mar",
    "archive not in the store": "no-such-model.mar",
}


GRPC_SERVICE = "/inference.GRPCInferenceService/"
# gRPC statuses that refuse a caller (what the kserve runtime's token check answers is the first)
GRPC_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
REPOSITORY_OFF = (405, "UNIMPLEMENTED")  # the kserve runtime's model repository, any key
UNKNOWN_MODEL = "no-such-model"  # repository calls name it: refused or not, nothing changes


def check_security(server, image, reference, args) -> dict:
    """Token refusals on the inference API, then the runtime's own management surface, then
    the listening sockets."""
    token_status, _ = server.token_refusal
    png = {"Content-Type": "application/octet-stream"}
    wrong = {"Authorization": "Bearer not-the-key"}
    v2_infer = f"{server.inference_url}/v2/models/{server.model}/infer"
    calls = {
        "predict, no token": ("POST", server.predictions_url, image, png),
        "explain, no token": ("POST", server.explanations_url, image, png),
        "predict v2, no token": ("POST", v2_infer, b"{}", {}),
        "predict, wrong token": ("POST", server.predictions_url, image, {**png, **wrong}),
        "models list on inference port, no token": ("GET", f"{server.inference_url}/models",
                                                    None, {}),
    }  # fmt: skip
    if server.has_management_api:
        management_key = {"Authorization": f"Bearer {server.management_token}"}
        calls["predict, management token"] = ("POST", server.predictions_url, image,
                                              {**png, **management_key})  # fmt: skip
    refused = {name: http_call(*call)[0] for name, call in calls.items()}
    found = management_api(server) if server.has_management_api else model_repository(server)
    refused.update(found.pop("refused"))
    pids = [server.frontend_pid(), *(worker["pid"] for worker in server.workers())]
    sockets = listening_sockets([pid for pid in pids if pid])
    loopback = all(ipaddress.ip_address(s.rsplit(":", 1)[0]).is_loopback for s in sockets)
    return {
        "passed": all(status == token_status for status in refused.values())
        and found.pop("passed")
        and found["models_after"] == [server.model]
        and bool(sockets)
        and loopback,
        "runtime": server.runtime,
        "refused_status": token_status,
        "refused_without_valid_token": refused,
        **found,
        "listening": sockets,
        "all_loopback": loopback,
    }


def management_api(server) -> dict:
    """TorchServe: its management API refuses calls without the management token, and
    registers nothing from outside the model store even with it."""
    management = server.management_url
    token, mgmt_token = server.inference_token, server.management_token
    refused = {}
    for name, (method, url, headers) in {
        "list models, no token": ("GET", f"{management}/models", {}),
        "describe model, no token": ("GET", f"{management}/models/{MODEL_NAME}", {}),
        "scale workers, no token": ("PUT", f"{management}/models/{MODEL_NAME}?min_worker=4", {}),
        "unregister, no token": ("DELETE", f"{management}/models/{MODEL_NAME}", {}),
        "list models, inference token": (
            "GET", f"{management}/models", {"Authorization": f"Bearer {token}"},
        ),
    }.items():  # fmt: skip
        refused[name] = http_call(method, url, None, headers)[0]
    register = {}
    # A file: URL is refused even into the store: only a bare archive name is looked up there.
    into_store = {
        "file URL of the store's own archive": f"file://{server.model_store}/{MODEL_NAME}.mar"
    }
    for name, url in {**REGISTER_REFUSED, **into_store}.items():
        query = urlencode({"url": url, "model_name": "evil", "initial_workers": 1})
        status, _ = http_call(
            "POST", f"{management}/models?{query}", None, {"Authorization": f"Bearer {mgmt_token}"}
        )
        register[name] = status
    # Registration and unregistration need the management token like the rest of the API.
    store_name = f"url={MODEL_NAME}.mar&model_name=evil"
    for name, (method, url, headers) in {
        "register from the store, no token": ("POST", f"{management}/models?{store_name}", {}),
        "register from the store, inference token": (
            "POST", f"{management}/models?{store_name}", {"Authorization": f"Bearer {token}"},
        ),
        "unregister a version, no token": (
            "DELETE", f"{management}/models/{MODEL_NAME}/{server.describe()[0]['modelVersion']}",
            {},
        ),
    }.items():  # fmt: skip
        refused[name] = http_call(method, url, None, headers)[0]
    models = json.loads(
        http_call("GET", f"{management}/models", None, {"Authorization": f"Bearer {mgmt_token}"})[1]
    )
    return {
        "passed": all(400 <= status < 500 for status in register.values()),
        "refused": refused,
        "register_attempts": register,
        "models_after": sorted(m["modelName"] for m in models.get("models", [])),
    }


def model_repository(server) -> dict:
    """The kserve runtime: no management API. Every call but the health checks needs the
    inference key, over REST and gRPC; KServe's model repository (load, unload: it would act
    on one worker only) is refused with any key. The calls name a model that does not exist
    or the served one, so a call let through would show in `models_after`."""
    base = server.inference_url
    inference_key = {"Authorization": f"Bearer {server.inference_token}"}
    repository = f"{base}/v2/repository/models"
    repository_calls = {
        "repository index": ("POST", f"{base}/v2/repository/index"),
        "repository load": ("POST", f"{repository}/{UNKNOWN_MODEL}/load"),
        "repository unload": ("POST", f"{repository}/{server.model}/unload"),
    }
    refused = {}
    for name, (method, url, headers) in {
        "v1 predict, no token": ("POST", f"{base}/v1/models/{server.model}:predict", {}),
        "v2 explain, no token": ("POST", f"{base}/v2/models/{server.model}/explain", {}),
        "v2 model metadata, no token": ("GET", f"{base}/v2/models/{server.model}", {}),
        "v2 models list, no token": ("GET", f"{base}/v2/models", {}),
        **{f"{name}, no token": (method, url, {})
           for name, (method, url) in repository_calls.items()},
    }.items():  # fmt: skip
        refused[name] = http_call(method, url, b"{}" if method == "POST" else None, headers)[0]
    repository_off = {
        f"{name}, inference key": http_call(method, url, b"{}", inference_key)[0]
        for name, (method, url) in repository_calls.items()
    }
    status, body = http_call("GET", f"{base}/v2/models", None, inference_key)
    models = sorted(json.loads(body).get("models", [])) if status == 200 else []
    calls = grpc_calls(server)
    expected = {name: (REPOSITORY_OFF[1] if "inference key" in name else GRPC_REFUSALS)
                for name in calls}  # fmt: skip
    return {
        "passed": all(status == REPOSITORY_OFF[0] for status in repository_off.values())
        and all(code in expected[name] for name, code in calls.items()),
        "refused": refused,
        "repository_with_the_inference_key": repository_off,
        "grpc_refused": calls,
        "models_after": models,
    }


def grpc_calls(server) -> dict[str, str]:
    """The gRPC status of each call that must be refused (raw bytes: no generated stubs, so
    no clash with another library's `inference.*` protobuf names)."""
    token = server.inference_token
    model = proto_string(server.model)  # field 1: model_name / name in these requests
    unknown = proto_string(UNKNOWN_MODEL)
    calls = {
        "ModelInfer, no token": ("ModelInfer", model, None),
        "ModelInfer, wrong token": ("ModelInfer", model, "not-the-key"),
        "ModelMetadata, no token": ("ModelMetadata", model, None),
        "ModelReady, no token": ("ModelReady", model, None),
        "RepositoryModelUnload, no token": ("RepositoryModelUnload", model, None),
        "RepositoryModelUnload, inference key": ("RepositoryModelUnload", model, token),
        "RepositoryModelLoad of an unknown model, inference key": (
            "RepositoryModelLoad", unknown, token,
        ),
    }  # fmt: skip
    with grpc.insecure_channel(server.grpc_address) as channel:
        return {
            name: grpc_status(channel, method, request, key)
            for name, (method, request, key) in calls.items()
        }


def proto_string(value: str) -> bytes:
    """A protobuf message whose field 1 is the string `value` (shorter than 128 bytes)."""
    data = value.encode()
    return bytes([0x0A, len(data)]) + data


def grpc_status(channel, method: str, request: bytes, token: str | None) -> str:
    call = channel.unary_unary(GRPC_SERVICE + method)  # bytes in, bytes out
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error.code().name
    return "OK"

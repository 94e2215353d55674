#!/usr/bin/env python3
"""Exit 0 only while MODEL_NAME is ready to answer (the image's HEALTHCHECK, a k8s probe).

    fashion-serve-healthcheck [--runtime torchserve|kserve] [--model fashion-cnn] [--port N]

The runtime is the container's RUNTIME (entrypoint.sh), torchserve unless set.
- torchserve: the model has a READY worker. Asks the management API (port 8081) with the
  management token from TorchServe's key_file.json; if the token has expired it renews it
  with the key file's API token and asks again. With TS_DISABLE_TOKEN_AUTHORIZATION=true
  (token auth off in TorchServe) it asks without a token.
- kserve: GET /v2/models/MODEL/ready on the HTTP port (8080) answers 200 {"ready": true},
  asked with the inference token from the key file the KServe runtime writes; without a
  token when DISABLE_TOKEN_AUTHORIZATION=true (the runtime then writes no key file).
Standard library only: it runs inside the image without the project installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 4
DEFAULT_PORTS = {"torchserve": 8081, "kserve": 8080}  # management API / HTTP (entrypoint.sh)
# The variable that turns token authorization off, per runtime (as entrypoint.sh reads it).
TOKEN_OFF_VARIABLES = {
    "torchserve": "TS_DISABLE_TOKEN_AUTHORIZATION",
    "kserve": "DISABLE_TOKEN_AUTHORIZATION",
}


def read_keys(key_file: Path) -> dict:
    return json.loads(key_file.read_text())


def get(url: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def ready_workers(body: bytes) -> int:
    """Number of READY workers in a `GET /models/{name}` answer."""
    return sum(
        1
        for model in json.loads(body)
        for worker in model.get("workers", [])
        if worker.get("status") == "READY"
    )


def check_torchserve(base: str, model: str, keys: dict, key_file: Path) -> int:
    status, body = get(f"{base}/models/{model}", keys.get("management", {}).get("key"))
    if status == 400 and keys.get("API", {}).get("key"):
        # 400 is TorchServe's answer to a missing, wrong or expired token: renew and retry.
        get(f"{base}/token?type=management", keys["API"]["key"])
        keys = read_keys(key_file)
        status, body = get(f"{base}/models/{model}", keys["management"]["key"])
    if status != 200:
        print(f"unhealthy: GET /models/{model} answered {status}: {body[:200]!r}")
        return 1
    workers = ready_workers(body)
    print(f"{model}: {workers} READY worker(s)")
    return 0 if workers > 0 else 1


def check_kserve(base: str, model: str, keys: dict) -> int:
    # The model's own readiness (token needed), not the open /v2/health/ready the kubelet's
    # probes use: this one also proves the token in the key file is the one the server holds.
    status, body = get(f"{base}/v2/models/{model}/ready", keys.get("inference", {}).get("key"))
    if status != 200:
        print(f"unhealthy: GET /v2/models/{model}/ready answered {status}: {body[:200]!r}")
        return 1
    try:
        ready = json.loads(body).get("ready") is True
    except (ValueError, AttributeError):
        ready = False
    print(f"{model}: {'ready' if ready else f'not ready: {body[:200]!r}'}")
    return 0 if ready else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runtime",
        choices=sorted(DEFAULT_PORTS),
        default=os.environ.get("RUNTIME") or "torchserve",
        help="the server the container runs (default: $RUNTIME, else torchserve)",
    )
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME", "fashion-cnn"))
    parser.add_argument(
        "--port", type=int, help="torchserve: management port (8081); kserve: HTTP port (8080)"
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(os.environ.get("TS_RUN_DIR", "/home/model-server/run")) / "key_file.json",
    )
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port or DEFAULT_PORTS[args.runtime]}"

    token_auth_off = os.environ.get(TOKEN_OFF_VARIABLES[args.runtime], "").lower() == "true"
    try:
        # Token auth off (auth at the ingress, docker/kserve/inferenceservice-autoscale.yaml):
        # the server writes no key file and needs no token.
        keys = {} if token_auth_off else read_keys(args.key_file)
    except (OSError, ValueError) as error:
        print(f"unhealthy: no readable key file at {args.key_file}: {error}")
        return 1
    if args.runtime == "kserve":
        return check_kserve(base, args.model, keys)
    return check_torchserve(base, args.model, keys, args.key_file)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as error:  # connection refused while starting, timeouts
        print(f"unhealthy: {error}")
        sys.exit(1)

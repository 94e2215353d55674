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
Standard library only (with management_api.py beside it): it runs inside the image without
the project installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Beside this file in the image (/usr/local/bin) and in the repo (docker/, a link to scripts/).
from management_api import ManagementApi, ManagementError, call, read_keys

TIMEOUT_S = 4
DEFAULT_PORTS = {"torchserve": 8081, "kserve": 8080}  # management API / HTTP (entrypoint.sh)
# The variable that turns token authorization off, per runtime (as entrypoint.sh reads it).
TOKEN_OFF_VARIABLES = {
    "torchserve": "TS_DISABLE_TOKEN_AUTHORIZATION",
    "kserve": "DISABLE_TOKEN_AUTHORIZATION",
}


def check_torchserve(base: str, model: str, key_file: Path | None) -> int:
    try:
        workers = ManagementApi(base, model, key_file, TIMEOUT_S).workers()
    except ManagementError as error:  # no answer, or not 200 (the token renewed once)
        print(f"unhealthy: {error}")
        return 1
    ready = sum(1 for worker in workers if worker.get("status") == "READY")
    print(f"{model}: {ready} READY worker(s)")
    return 0 if ready > 0 else 1


def check_kserve(base: str, model: str, token: str | None) -> int:
    # The model's own readiness (token needed), not the open /v2/health/ready the kubelet's
    # probes use: this one also proves the token in the key file is the one the server holds.
    status, body = call("GET", f"{base}/v2/models/{model}/ready", token, TIMEOUT_S)
    if status != 200:
        print(f"unhealthy: GET /v2/models/{model}/ready answered {status}: {body!r:.200}")
        return 1
    ready = isinstance(body, dict) and body.get("ready") is True
    print(f"{model}: {'ready' if ready else f'not ready: {body!r:.200}'}")
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
    # Token auth off (auth at the ingress, docker/kserve/inferenceservice-autoscale.yaml):
    # the server writes no key file and needs no token.
    key_file = None if token_auth_off else args.key_file
    try:
        keys = read_keys(key_file) if key_file else {}
    except (OSError, ValueError) as error:
        print(f"unhealthy: no readable key file at {args.key_file}: {error}")
        return 1
    if args.runtime == "kserve":
        return check_kserve(base, args.model, keys.get("inference", {}).get("key"))
    return check_torchserve(base, args.model, key_file)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as error:  # the KServe runtime: connection refused while starting, timeouts
        print(f"unhealthy: {error}")
        sys.exit(1)

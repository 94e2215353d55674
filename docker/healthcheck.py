#!/usr/bin/env python3
"""Exit 0 only while MODEL_NAME has a READY worker (the image's HEALTHCHECK, a k8s probe).

    fashion-serve-healthcheck [--model fashion-cnn] [--port 8081]

Asks the management API with the management token from TorchServe's key_file.json; if
the token has expired it renews it with the key file's API token and asks again. With
TS_DISABLE_TOKEN_AUTHORIZATION=true (token auth off in TorchServe) it asks without a token.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME", "fashion-cnn"))
    parser.add_argument("--port", type=int, default=8081, help="management port (default 8081)")
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(os.environ.get("TS_RUN_DIR", "/home/model-server/run")) / "key_file.json",
    )
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"

    token_auth_off = os.environ.get("TS_DISABLE_TOKEN_AUTHORIZATION", "").lower() == "true"
    try:
        # Token auth off (auth at the ingress, docker/kserve/inferenceservice-autoscale.yaml):
        # TorchServe writes no key file and needs no token.
        keys = {} if token_auth_off else read_keys(args.key_file)
    except (OSError, ValueError) as error:
        print(f"unhealthy: no readable key file at {args.key_file}: {error}")
        return 1
    status, body = get(f"{base}/models/{args.model}", keys.get("management", {}).get("key"))
    if status == 400 and keys.get("API", {}).get("key"):
        # 400 is TorchServe's answer to a missing, wrong or expired token: renew and retry.
        get(f"{base}/token?type=management", keys["API"]["key"])
        keys = read_keys(args.key_file)
        status, body = get(f"{base}/models/{args.model}", keys["management"]["key"])
    if status != 200:
        print(f"unhealthy: GET /models/{args.model} answered {status}: {body[:200]!r}")
        return 1
    workers = ready_workers(body)
    print(f"{args.model}: {workers} READY worker(s)")
    return 0 if workers > 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as error:  # connection refused while starting, timeouts
        print(f"unhealthy: {error}")
        sys.exit(1)

"""OIP gRPC load on the kserve runtime with stock tritonclient.grpc: ModelInfer calls from
C threads (one client each), every answer checked against the same image's REST answer.

    python -m benchmarks.grpc_load --address 127.0.0.1:7070 --rest http://127.0.0.1:8080 \\
        --key-file run/key_file.json --concurrency 1 8 32 --duration 10

An answer is right when its top class is the REST answer's and each of its probabilities is
within 1e-5 of the REST one (POST /v2/models/{m}/infer, which gives all of them). Prints one
line `GRPC_JSON {"c1": {...}, ...}`: calls, failed (error statuses and wrong answers),
requests/s, p50/p95/p99 latency in ms. benchmarks.bench runs this pinned to the core wrk uses;
benchmarks.reliability's `grpc` check calls `check_grpc` (10,000 calls at c32, one call with
16 images, one explanation).

tritonclient's protobuf module and kserve's register the same `inference.*` names, so this
runs in a process that does not import kserve (benchmarks never do); tritonclient is imported
when a call is made.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from benchmarks.cli import DEFAULT_IMAGE
from fashion_serve.oip import INPUT_NAME
from tests.support.servers import MODEL_NAME, REPO_ROOT, http_call

PROBABILITY_TOLERANCE = 1e-5
BATCH_IMAGES = 16  # max_images_per_request: the most one ModelInfer may carry
CALL_TIMEOUT_S = 60
GRPC_JSON_PREFIX = "GRPC_JSON "
SAMPLES_DIR = REPO_ROOT / "samples"


@dataclass(frozen=True)
class Expected:
    """One image's REST answer: every class's probability, and the top class."""

    probabilities: np.ndarray  # (C,)
    top_class: str


def rest_expected(rest_url: str, model: str, token: str, images: list[bytes]) -> list[Expected]:
    """Each image's answer from POST /v2/models/{model}/infer (JSON, base64), one call each."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    expected = []
    for image in images:
        tensor = {
            "name": INPUT_NAME,
            "datatype": "BYTES",
            "shape": [1],
            "data": [base64.b64encode(image).decode("ascii")],
        }
        body = json.dumps({"inputs": [tensor]}).encode()
        status, answer = http_call("POST", f"{rest_url}/v2/models/{model}/infer", body, headers)
        if status != 200:
            raise RuntimeError(f"the REST reference answered {status}: {answer[:300]!r}")
        outputs = {o["name"]: o for o in json.loads(answer)["outputs"]}
        probabilities = np.asarray(outputs["probabilities"]["data"], dtype=np.float64)
        expected.append(Expected(probabilities, outputs["classes"]["data"][0]))
    return expected


def images_input(images: list[bytes]):
    import tritonclient.grpc as triton_grpc

    tensor = triton_grpc.InferInput(INPUT_NAME, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def wrong_rows(result, expected: list[Expected]) -> list[int]:
    """Indexes of the answer's rows that differ from the REST answers (all, if malformed)."""
    probabilities = result.as_numpy("probabilities")  # (N, C) float32
    classes = result.as_numpy("classes")  # (N, k) bytes, highest first
    n = len(expected)
    if probabilities is None or classes is None or probabilities.shape[0] != n or len(classes) != n:
        return list(range(n))
    wrong = []
    for row, (probs, names, solo) in enumerate(zip(probabilities, classes, expected, strict=True)):
        top = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        close = probs.shape == solo.probabilities.shape and bool(
            np.all(np.abs(probs - solo.probabilities) <= PROBABILITY_TOLERANCE)
        )
        if top != solo.top_class or not close:
            wrong.append(row)
    return wrong


def grpc_load(
    address: str,
    model: str,
    token: str,
    image: bytes,
    expected: Expected,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> dict:
    """`requests` ModelInfer calls of one image (or as many as `duration_s` allows; at least
    one bound) from `concurrency` threads, each with its own tritonclient; their figures."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    if requests is None and duration_s is None:
        raise ValueError("give requests or duration_s: the load must end")
    headers = {"authorization": f"Bearer {token}"} if token else None
    remaining = [requests if requests is not None else float("inf")]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    started = time.perf_counter()

    def worker() -> None:
        client = triton_grpc.InferenceServerClient(address)
        inputs = [images_input([image])]
        try:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                sent = time.perf_counter()
                if duration_s is not None and sent - started > duration_s:
                    return
                try:
                    result = client.infer(
                        model, inputs, headers=headers, client_timeout=CALL_TIMEOUT_S
                    )
                    failure = "wrong answer" if wrong_rows(result, [expected]) else None
                except InferenceServerException as error:
                    failure = str(error.status())
                done = time.perf_counter()
                with lock:
                    latencies.append(done - sent)
                    if failure:
                        failures[failure] = failures.get(failure, 0) + 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    failed = sum(failures.values())
    return {
        "requests": len(latencies),
        "concurrency": concurrency,
        "failed": failed,
        "failures": failures,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        **percentiles_ms(latencies),
        # the served-table columns (benchmarks.report): gRPC has no HTTP status
        "non_2xx": failed,
        "socket_errors": 0,
    }


def percentiles_ms(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(latencies)

    def at(share: float) -> float:
        return round(ordered[round(share * (len(ordered) - 1))] * 1e3, 3)

    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }


def sixteen_images() -> list[bytes]:
    """16 images, each to be checked against its own REST answer: the 10 samples, then the
    first 6 of them mirrored."""
    samples = sorted(SAMPLES_DIR.glob("*.png"))
    images = [path.read_bytes() for path in samples]
    for path in samples[: BATCH_IMAGES - len(images)]:
        buffer = io.BytesIO()
        ImageOps.mirror(Image.open(path)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def check_grpc(server, image, reference, args) -> dict:
    """The reliability suite's gRPC check (kserve runtime): `args.grpc_requests` ModelInfer
    calls at `args.concurrency`, none failed; one call with 16 images, each row its image's
    REST answer; one explanation (parameter explain=true) with the REST explanation's target."""
    import tritonclient.grpc as triton_grpc

    token = server.inference_token
    address = server.grpc_address
    (expected,) = rest_expected(server.inference_url, server.model, token, [image])
    load = grpc_load(
        address, server.model, token, image, expected, args.concurrency, requests=args.grpc_requests
    )

    batch = sixteen_images()
    batch_expected = rest_expected(server.inference_url, server.model, token, batch)
    headers = {"authorization": f"Bearer {token}"}
    client = triton_grpc.InferenceServerClient(address)
    try:
        result = client.infer(
            server.model, [images_input(batch)], headers=headers, client_timeout=CALL_TIMEOUT_S
        )
        wrong = wrong_rows(result, batch_expected)
        explained = client.infer(
            server.model,
            [images_input([image])],
            headers=headers,
            parameters={"explain": True},
            client_timeout=CALL_TIMEOUT_S,
        )
    finally:
        client.close()
    status, body = http_call(
        "POST",
        server.explanations_url,
        image,
        {**server.inference_headers, "Content-Type": "application/octet-stream"},
    )
    rest_explanation = json.loads(body) if status == 200 else {}
    grpc_target = explained.as_numpy("target_name")
    grpc_target = grpc_target[0].decode() if grpc_target is not None else None
    explanation_agrees = grpc_target == rest_explanation.get("target_name")
    return {
        "passed": load["failed"] == 0
        and load["requests"] == args.grpc_requests
        and not wrong
        and explanation_agrees,
        "load": load,
        "batch_of_16": {"images": len(batch), "wrong_rows": wrong},
        "explanation": {
            "grpc_target": grpc_target,
            "rest_target": rest_explanation.get("target_name"),
            "rest_status": status,
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", required=True, help="the gRPC host:port")
    parser.add_argument("--rest", required=True, help="the REST base URL (for the reference)")
    parser.add_argument(
        "--key-file", type=Path, default=None, help="key_file.json (no tokens without)"
    )
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--duration", type=float, default=10, help="seconds per point (default 10)")
    parser.add_argument("--requests", type=int, default=None, help="calls per point instead")
    parser.add_argument(
        "--warmup-s", type=float, default=5, help="unrecorded load first (default 5)"
    )
    args = parser.parse_args(argv)
    token = json.loads(args.key_file.read_text())["inference"]["key"] if args.key_file else ""
    image = args.image.read_bytes()
    (expected,) = rest_expected(args.rest, args.model, token, [image])
    duration_s = None if args.requests else args.duration

    def point(concurrency: int, seconds: float | None, requests: int | None) -> dict:
        return grpc_load(
            args.address,
            args.model,
            token,
            image,
            expected,
            concurrency,
            requests=requests,
            duration_s=seconds,
        )

    if args.warmup_s > 0:
        point(max(args.concurrency), args.warmup_s, None)
    points = {}
    for concurrency in args.concurrency:
        points[f"c{concurrency}"] = point(concurrency, duration_s, args.requests)
    print(GRPC_JSON_PREFIX + json.dumps(points), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

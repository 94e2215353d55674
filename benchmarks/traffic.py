"""Steady traffic for the reliability checks: keep-alive clients in threads, each answer
checked against a reference prediction, and the load check (every request valid, worker
memory flat).
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support.servers import TorchServe, rss_kib

RSS_GROWTH_LIMIT = 0.10
PROBABILITY_TOLERANCE = 1e-4  # batch composition may move the last digits


class Client:
    def __init__(self, base_url: str, timeout_s: float = 60) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout_s = parts.hostname, parts.port, timeout_s
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        """(status, body); raises OSError / http.client errors when the connection fails."""
        status, _, answer = self.exchange(method, path, body, headers)
        return status, answer

    def exchange(self, method: str, path: str, body: bytes | None = None, headers=None):
        """(status, response headers, body); raises like request()."""
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, self.timeout_s)
        try:
            self.connection.request(method, path, body=body, headers=headers or {})
            response = self.connection.getresponse()
            return response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def predict_headers(token: str, content_type: str = "application/octet-stream") -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


def same_answer(body: bytes, reference: dict) -> bool:
    """A valid prediction body: JSON {class name: probability} with the reference's classes
    in the same order and probabilities within PROBABILITY_TOLERANCE."""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    if not isinstance(answer, dict) or list(answer) != list(reference):
        return False
    return all(
        isinstance(answer[name], float)
        and abs(answer[name] - reference[name]) <= PROBABILITY_TOLERANCE
        for name in reference
    )


@dataclass
class Outcome:
    sent_s: float  # since the load started
    done_s: float
    status: int  # 0: connection error
    valid: bool
    client: int  # which of the load's threads (each its own connection) sent it


def run_load(
    server: TorchServe,
    image: bytes,
    reference: dict,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    on_start=None,
    url: str | None = None,
    is_valid: Callable[[bytes], bool] | None = None,
) -> list[Outcome]:
    """`requests` predictions (or as many as fit in `duration_s`) from `concurrency` threads;
    to another `url` of the server (e.g. its explanations), with answers judged by
    `is_valid` instead of a comparison with `reference`."""
    path = urlsplit(url or server.predictions_url).path
    is_valid = is_valid or (lambda body: same_answer(body, reference))
    headers = predict_headers(server.inference_token)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    remaining = [requests if requests is not None else float("inf")]
    started = time.perf_counter()

    def worker(index: int) -> None:
        client = Client(server.inference_url)
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            now = time.perf_counter() - started
            if duration_s is not None and now > duration_s:
                break
            try:
                status, body = client.request("POST", path, image, headers)
                valid = status == 200 and is_valid(body)
            except (OSError, http.client.HTTPException):
                status, valid = 0, False
            outcome = Outcome(now, time.perf_counter() - started, status, valid, index)
            with lock:
                outcomes.append(outcome)
        client.close()

    threads = [
        threading.Thread(target=worker, args=(index,), daemon=True) for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    if on_start is not None:
        on_start(started)
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.done_s)


def latency_ms(outcomes: list[Outcome]) -> dict:
    """p50 and p99 latency of the outcomes, in ms."""
    latencies = sorted(o.done_s - o.sent_s for o in outcomes)
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
    }


def count_statuses(outcomes: list[Outcome]) -> dict:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = str(outcome.status) if outcome.status else "connection_error"
        counts[key] = counts.get(key, 0) + 1
    return counts


def check_load(server, image, reference, args) -> dict:
    worker_pids = server.ready_worker_pids()
    run_load(server, image, reference, args.concurrency, requests=args.warmup)
    rss_before = {pid: rss_kib(pid) for pid in worker_pids}
    started = time.perf_counter()
    outcomes = run_load(server, image, reference, args.concurrency, requests=args.requests)
    elapsed = time.perf_counter() - started
    rss_after = {pid: rss_kib(pid) for pid in worker_pids}
    valid = sum(o.valid for o in outcomes)
    growth = {pid: (rss_after[pid] - rss_before[pid]) / rss_before[pid] for pid in worker_pids}
    return {
        "passed": valid == args.requests
        and all(abs(g) <= RSS_GROWTH_LIMIT for g in growth.values())
        and server.ready_worker_pids() == worker_pids,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "valid_200": valid,
        "statuses": count_statuses(outcomes),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(outcomes) / elapsed, 1),
        **latency_ms(outcomes),
        "worker_pids": worker_pids,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_growth": {pid: round(g, 4) for pid, g in growth.items()},
        "max_rss_growth": round(max(growth.values(), key=abs), 4),
        "warmup_requests": args.warmup,
    }

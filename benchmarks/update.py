"""The update check: swap the model version under load, then roll back, losing nothing.

A second export is made from the served one: the same TorchScript with its last bias moved
(so its answers differ from the first version's) and the next version in its contract.
At concurrency C for the whole time: `serve.sh update --export-dir <second>`, a pause,
`serve.sh rollback`, a pause. Every answer must be a 200 whose X-Model-Version is the old or
the new version and whose body is that version's answer; the worker memory after each swap
must be back to one model's worth (the replaced version's workers gone).

Nobody may notice the swap either: the latency of the requests sent in each phase of each
swap (stage: the archive is made and staged; register: the new version's workers start until
READY; switch: it becomes the default; drain: the old version's queue empties and it is
unregistered; steady: the rest) is reported, and the check fails when the p99 over the
whole window exceeds --update-p99-ms or the slowest request --update-slowest-ms.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from benchmarks.traffic import Client, predict_headers, same_answer
from tests.support.servers import TorchServe, http_call, rss_kib
from tests.support.versions import next_version_export

VERSION_HEADER = "X-Model-Version"
RSS_LIMIT = 1.25  # worker memory after a swap, relative to before it


@dataclass
class Answer:
    sent_s: float
    done_s: float
    status: int  # 0: connection error
    version: str | None
    body: bytes


def load_until(server: TorchServe, image: bytes, concurrency: int, stop: threading.Event):
    """Predictions from `concurrency` threads until `stop` is set; (answers, start time)."""
    path = urlsplit(server.predictions_url).path
    headers = predict_headers(server.inference_token)
    answers: list[Answer] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def worker() -> None:
        client = Client(server.inference_url)
        while not stop.is_set():
            sent = time.perf_counter() - started
            try:
                status, response_headers, body = client.exchange("POST", path, image, headers)
                version = response_headers.get(VERSION_HEADER)
            except (OSError, http.client.HTTPException):
                status, version, body = 0, None, b""
            answer = Answer(sent, time.perf_counter() - started, status, version, body)
            with lock:
                answers.append(answer)
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    return threads, answers, started


def worker_memory(server: TorchServe) -> dict:
    pids = server.ready_worker_pids()
    return {"pids": pids, "rss_kib": sum(rss_kib(pid) for pid in pids)}


def first_answer_from(answers: list[Answer], version: str, after_s: float) -> float | None:
    """Seconds from `after_s` until the first answer from `version` sent after it."""
    times = [a.done_s for a in answers if a.version == version and a.sent_s >= after_s]
    return round(min(times) - after_s, 2) if times else None


def swap_phases(server: TorchServe, command: str, start_s: float, end_s: float) -> list:
    """(phase, from_s, to_s) of one `serve.sh update|rollback` that ran from start_s to end_s,
    from the timings scripts/rollout.py prints last (seconds since it began registering)."""
    lines = (server.run_dir / "scripts.log").read_text().splitlines()
    timings = json.loads(next(line for line in reversed(lines) if '"ready_s"' in line))
    registered = end_s - timings["done_s"]  # the script exits right after its last line
    marks = [start_s, registered, registered + timings["ready_s"],
             registered + timings["default_s"], end_s]  # fmt: skip
    names = (f"{command} stage", f"{command} register", f"{command} switch", f"{command} drain")
    return [(name, marks[i], marks[i + 1]) for i, name in enumerate(names)]


def latency_by_phase(answers: list[Answer], phases: list) -> dict:
    """p50, p99 and slowest latency (ms) of the answers sent in each phase, and overall."""

    def figures(latencies: list[float]) -> dict:
        if not latencies:
            return {"requests": 0}
        ordered = sorted(latencies)
        return {
            "requests": len(ordered),
            "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "slowest_ms": round(ordered[-1], 1),
        }

    def phase_of(answer: Answer) -> str:
        return next((n for n, a, b in phases if a <= answer.sent_s < b), "steady")

    latencies: dict[str, list[float]] = {name: [] for name, _, _ in phases}
    latencies["steady"] = []
    for answer in answers:
        latencies[phase_of(answer)].append(1000 * (answer.done_s - answer.sent_s))
    by_phase = {name: figures(values) for name, values in latencies.items()}
    by_phase["whole window"] = figures([v for values in latencies.values() for v in values])
    return by_phase


def timeline(answers: list[Answer], phases: list, step_s: float = 0.5) -> list[dict]:
    """Per `step_s` of send time: requests sent, the slowest of them, and the phase."""
    buckets: dict[int, list[float]] = {}
    for answer in answers:
        buckets.setdefault(int(answer.sent_s / step_s), []).append(answer.done_s - answer.sent_s)
    rows = []
    for index in sorted(buckets):
        at = index * step_s
        phase = next((n for n, a, b in phases if a <= at < b), "steady")
        slowest = round(1000 * max(buckets[index]))
        rows.append(
            {"at_s": at, "phase": phase, "sent": len(buckets[index]), "slowest_ms": slowest}
        )
    return rows


def check_update(server, image, reference, args) -> dict:
    old_version = server.describe()[0]["modelVersion"]
    new_export = server.run_dir / "update-export"
    new_version = next_version_export(server.export_dir, new_export)
    memory = {"before": worker_memory(server)}

    stop = threading.Event()
    threads, answers, started = load_until(server, image, args.update_concurrency, stop)
    time.sleep(args.update_settle_s)
    update_at = time.perf_counter() - started
    server.update(new_export)
    update_s = time.perf_counter() - started - update_at
    phases = swap_phases(server, "update", update_at, update_at + update_s)
    memory["after_update"] = worker_memory(server)
    status, body = http_call(
        "POST",
        f"{server.predictions_url}/{new_version}",
        image,
        predict_headers(server.inference_token),
    )
    references = {old_version: reference, new_version: json.loads(body) if status == 200 else {}}
    time.sleep(args.update_settle_s)
    rollback_at = time.perf_counter() - started
    server.rollback()
    rollback_s = time.perf_counter() - started - rollback_at
    phases += swap_phases(server, "rollback", rollback_at, rollback_at + rollback_s)
    memory["after_rollback"] = worker_memory(server)
    time.sleep(args.update_settle_s)
    stop.set()
    for thread in threads:
        thread.join()

    def valid(answer: Answer) -> bool:
        return (
            answer.status == 200
            and answer.version in references
            and same_answer(answer.body, references[answer.version])
        )

    failed = [a for a in answers if not valid(a)]
    by_version = {v: sum(a.version == v for a in answers) for v in references}
    one_model = memory["before"]["rss_kib"]
    memory_back = all(
        memory[key]["rss_kib"] <= RSS_LIMIT * one_model
        and len(memory[key]["pids"]) == len(memory["before"]["pids"])
        for key in ("after_update", "after_rollback")
    )
    replaced_gone = not set(memory["before"]["pids"]) & set(memory["after_update"]["pids"])
    latency = latency_by_phase(answers, phases)
    window = latency["whole window"]
    unnoticed = (
        window.get("p99_ms", 0) <= args.update_p99_ms
        and window.get("slowest_ms", 0) <= args.update_slowest_ms
    )
    return {
        "passed": not failed
        and all(by_version.values())
        and references[new_version] != reference
        and memory_back
        and replaced_gone
        and unnoticed,
        "concurrency": args.update_concurrency,
        "latency_targets_ms": {"p99": args.update_p99_ms, "slowest": args.update_slowest_ms},
        "latency_met": unnoticed,
        "latency_by_phase": latency,
        "phases_s": [(name, round(a, 2), round(b, 2)) for name, a, b in phases],
        "old_version": old_version,
        "new_version": new_version,
        "requests": len(answers),
        "failed": len(failed),
        "failed_examples": [
            {
                "status": a.status,
                "version": a.version,
                "body": a.body[:200].decode(errors="replace"),
            }
            for a in failed[:5]
        ],
        "answers_by_version": by_version,
        "update_command_s": round(update_s, 2),
        "update_to_new_version_serving_s": first_answer_from(answers, new_version, update_at),
        "rollback_command_s": round(rollback_s, 2),
        "rollback_to_old_version_serving_s": first_answer_from(
            [a for a in answers if a.sent_s >= rollback_at], old_version, rollback_at
        ),
        "worker_memory_kib": {key: value["rss_kib"] for key, value in memory.items()},
        "worker_pids": {key: value["pids"] for key, value in memory.items()},
        "memory_back_to_one_model": memory_back,
        "requests_per_s": round(len(answers) / max(a.done_s for a in answers), 1) if answers else 0,
        "timeline": timeline(answers, phases),
    }

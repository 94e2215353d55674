"""Faults under load: a worker killed with SIGKILL, and the whole server restarted."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

from benchmarks.traffic import count_statuses, predict_headers, run_load, same_answer
from tests.support.servers import TorchServe, http_call

NEW_WORKER_TIMEOUT_S = 120


def wait_for_new_worker(
    server: TorchServe, old_pids: list[int], timeout_s=NEW_WORKER_TIMEOUT_S
) -> int | None:
    """The pid of a READY worker that is not one of `old_pids` (None after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pids = server.ready_worker_pids()
        except (OSError, RuntimeError):
            pids = []
        fresh = [pid for pid in pids if pid not in old_pids]
        if fresh:
            return fresh[0]
        time.sleep(0.1)
    return None


def check_kill(server, image, reference, args) -> dict:
    kills = []
    for _ in range(args.kills):
        pids_before = server.ready_worker_pids()
        old_pid = pids_before[0]
        kill_at = {}

        def killer(load_started: float, old_pid=old_pid, kill_at=kill_at, old=pids_before):
            time.sleep(args.kill_after_s)
            kill_at["s"] = time.perf_counter() - load_started
            os.kill(old_pid, signal.SIGKILL)
            new_pid = wait_for_new_worker(server, old)
            kill_at["ready_s"] = time.perf_counter() - load_started
            kill_at["new_pid"] = new_pid

        killers = []

        def start_killer(load_started: float, killers=killers) -> None:
            killers.append(threading.Thread(target=killer, args=(load_started,), daemon=True))
            killers[0].start()

        outcomes = run_load(
            server, image, reference, args.concurrency, duration_s=args.kill_load_s,
            on_start=start_killer,
        )  # fmt: skip
        # The replacement may take longer than the load lasts: wait for it (or its timeout).
        killers[0].join(timeout=NEW_WORKER_TIMEOUT_S + 30)
        killed = kill_at["s"]
        failed = [o for o in outcomes if not o.valid]
        resumed = [o for o in outcomes if o.valid and o.sent_s >= killed]
        ok_after = bool(resumed) and all(o.valid for o in outcomes if o.sent_s >= resumed[0].sent_s)
        ready = kill_at.get("ready_s")
        after_ready = None if ready is None else sum(o.sent_s >= ready for o in failed)
        kills.append(
            {
                "old_pid": old_pid,
                "workers_before": pids_before,
                "new_pid": kill_at.get("new_pid"),
                "requests": len(outcomes),
                "failed": len(failed),
                "failed_statuses": count_statuses(failed),
                "failed_sent_before_kill": sum(o.sent_s < killed for o in failed),
                "most_failed_on_one_client": max(
                    Counter(o.client for o in failed).values(), default=0
                ),
                "new_worker_ready_after_s": round(kill_at["ready_s"] - killed, 2)
                if "ready_s" in kill_at
                else None,
                "serving_resumed_after_s": round(resumed[0].done_s - killed, 2)
                if resumed
                else None,
                "all_ok_after_resume": ok_after,
                "failed_sent_after_new_worker_ready": after_ready,
            }
        )
    # Behind TorchServe's frontend a client's connection outlives the worker: only requests
    # in flight at the kill may fail (at most one batch a connection), and nothing once
    # serving resumed. The kserve runtime has no frontend, and each of its workers listens on
    # the port with a socket of its own (SO_REUSEPORT): the killed worker's open connections
    # are reset, each failing on its request in flight or on the next one sent over it, which
    # may come after others succeeded; and a client that reconnects at once can land in the
    # dying worker's accept queue before the kernel closes it, and fail once more (Linux moves
    # such connections to a live socket only with net.ipv4.tcp_migrate_req=1). There: at most
    # two failures a connection, and none once the new worker is ready.
    if server.worker_death_resets_connections:
        settled = [k["failed_sent_after_new_worker_ready"] == 0 for k in kills]
        bounded = [k["most_failed_on_one_client"] <= 2 for k in kills]
    else:
        settled = [k["all_ok_after_resume"] for k in kills]
        bounded = [k["failed"] <= args.concurrency for k in kills]
    return {
        "passed": all(k["new_pid"] and k["serving_resumed_after_s"] is not None for k in kills)
        and all(settled)
        and all(bounded),
        "concurrency": args.concurrency,
        "kills": kills,
    }


def check_restart(server, image, reference, args) -> dict:
    old_frontend = server.frontend_pid()
    stop_started = time.perf_counter()
    server.stop()
    stopped_s = time.perf_counter() - stop_started
    down = server.frontend_pid() is None
    start_s = server.start()
    status, body = http_call(
        "POST", server.predictions_url, image, predict_headers(server.inference_token)
    )
    return {
        "passed": down and status == 200 and same_answer(body, reference),
        "old_frontend_pid": old_frontend,
        "new_frontend_pid": server.frontend_pid(),
        "stop_s": round(stopped_s, 2),
        "start_until_ready_s": round(start_s, 2),
        "prediction_after_restart": status,
    }

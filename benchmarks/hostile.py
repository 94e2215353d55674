"""The reliability check that sends the hostile corpus (tests.support.hostile), each request
followed by a good one, and compares what two runtimes answered."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from benchmarks.traffic import Client, predict_headers, same_answer
from tests.support.hostile import (
    EXPECTED_ON_RUNTIME,
    KNOWN_UPSTREAM_BY_RUNTIME,
    RESET_ALLOWED,
    bad_requests,
)
from tests.support.servers import REPO_ROOT, http_call, read_properties


def check_corpus(server, image, reference, args) -> dict:
    config = read_properties((REPO_ROOT / "config.properties").read_text())
    max_request_size = int(config.get("max_request_size", 1048576))
    token = server.inference_token
    predict_path = urlsplit(server.predictions_url).path
    explain_path = urlsplit(server.explanations_url).path
    pid_before = server.ready_worker_pids()
    cases, good = [], []
    by_design = EXPECTED_ON_RUNTIME.get(server.runtime, {})
    for name, method, path, body, headers, expected in bad_requests(image, max_request_size):
        expected = by_design.get(name, expected)
        path = path.replace("{p}", predict_path).replace("{e}", explain_path)
        path = path.replace("{v2}", f"/v2/models/{server.model}/infer")
        client = Client(server.inference_url)
        try:
            status, answer = client.request(
                method, path, body, {**headers, "Authorization": f"Bearer {token}"}
            )
        except (OSError, http.client.HTTPException) as error:
            status, answer = 0, str(error).encode()
        finally:
            client.close()
        try:
            parsed = json.loads(answer)
            # {"code", "type", "message"}, or the Open Inference Protocol's {"error": ...}
            json_error = isinstance(parsed, dict) and ("message" in parsed or "error" in parsed)
        except (ValueError, RecursionError):
            parsed, json_error = None, False
        cases.append(
            {
                "name": name,
                "expected": expected,
                "status": status,
                "json_error": json_error,
                "ok": (status == expected and json_error)
                or (status == expected == 200 and same_answer(answer, reference))
                or (name in RESET_ALLOWED and status == 0 and "reset" in str(answer)),
                "body": answer[:200].decode("utf-8", "replace"),
                # the whole error, to compare runtimes (benchmarks.reliability)
                "error": parsed if json_error else None,
            }
        )
        status, answer = http_call("POST", server.predictions_url, image, predict_headers(token))
        good.append(status == 200 and same_answer(answer, reference))
    pid_after = server.ready_worker_pids()
    known = KNOWN_UPSTREAM_BY_RUNTIME.get(server.runtime, {})
    for case in cases:
        if not case["ok"] and case["name"] in known:
            case["known_upstream"] = known[case["name"]]
    unexpected = [c for c in cases if not c["ok"] and "known_upstream" not in c]
    # What this runtime answers to the cases another runtime is known to get wrong upstream.
    elsewhere = {
        case["name"]: {"runtime": other, "status": case["status"], "ok": case["ok"]}
        for other, limits in KNOWN_UPSTREAM_BY_RUNTIME.items()
        if other != server.runtime
        for case in cases
        if case["name"] in limits
    }
    return {
        "passed": not unexpected and all(good) and pid_before == pid_after,
        "runtime": server.runtime,
        "cases": len(cases),
        "as_expected": sum(c["ok"] for c in cases),
        "server_errors": [c["name"] for c in cases if c["status"] >= 500],
        "unexpected": unexpected,
        "known_upstream": [c for c in cases if "known_upstream" in c],
        "known_upstream_elsewhere": elsewhere,
        "good_requests_ok": f"{sum(good)}/{len(good)}",
        "worker_pid_before": pid_before,
        "worker_pid_after": pid_after,
        "all": cases,
    }


def corpus_differences(first: dict, second: dict) -> list[dict]:
    """The corpus cases two runtimes answered differently (status, or the JSON error), each
    with both answers: {"name", <runtime>: {"status", "error" or "body"}, ...}."""

    def answer(case: dict) -> dict:
        shown = (
            {"error": case["error"]} if case.get("error") is not None else {"body": case["body"]}
        )
        return {"status": case["status"], **shown}

    theirs = {case["name"]: case for case in second["all"]}
    differences = []
    for case in first["all"]:
        other = theirs.get(case["name"])
        if other is None or answer(case) != answer(other):
            differences.append(
                {
                    "name": case["name"],
                    first["runtime"]: answer(case),
                    second["runtime"]: answer(other) if other else None,
                }
            )
    return differences

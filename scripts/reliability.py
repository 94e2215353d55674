"""Reliability checks against a real TorchServe, started the way users start it (serve.sh).

    .venv/bin/python scripts/reliability.py                     # all checks, 10,000 requests
    .venv/bin/python scripts/reliability.py --requests 500 --kills 1 --checks load corpus

Checks (each passes or fails; the exit status is 1 if any fails):
- security: without a token every inference and management call is refused (400 in 0.12),
  a wrong or swapped token too; no model can be registered from a URL; every port the
  server listens on is bound to loopback;
- corpus: >= 25 malformed or hostile requests each get their 4xx JSON error, none a 5xx,
  the worker is never restarted (same pid), and good requests in between all succeed;
- load: N predictions at concurrency C all answer 200 with a valid body (same answer as a
  reference request); the worker's RSS after is within 10 % of before (after a warm-up);
- kill: SIGKILL the worker mid-load: TorchServe starts a new one; failed requests are
  counted and the time until predictions succeed again is measured;
- restart: serve.sh stop + start: the model comes back with no manual step.
Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import ipaddress
import json
import os
import signal
import statistics
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
from servers import (
    DEFAULT_EXPORT_DIR,
    DEFAULT_IMAGE,
    MODEL_NAME,
    REPO_ROOT,
    TorchServe,
    http_call,
    rss_kib,
    temp_dir,
)

DEFAULT_OUT = REPO_ROOT / "artifacts" / "reliability" / "reliability.json"
CHECKS = ("security", "corpus", "load", "kill", "restart")
RSS_GROWTH_LIMIT = 0.10
PROBABILITY_TOLERANCE = 1e-4  # batch composition may move the last digits
# Oversized request lines and headers: Netty answers 400 and closes the connection while the
# rest of the request is still arriving, so the client may get a reset instead of the 400.
RESET_ALLOWED = ("header of 64 KiB", "URL of 64 KiB")
# Corpus cases TorchServe 0.12's Java frontend answers before the handler runs, so neither
# the handler nor config.properties can change them: reported, not failed.
KNOWN_UPSTREAM = {
    "binary body sent as a urlencoded form": "the frontend's form decoder throws "
    "ErrorDataDecoderException on non-form bytes and answers 500 (send a Content-Type)",
    "body over max_request_size": "Netty's aggregator answers 413 with an empty body, "
    "not TorchServe's JSON error",
}


# --- a small keep-alive client, one per thread ----------------------------------------------
class Client:
    def __init__(self, base_url: str, timeout_s: float = 60) -> None:
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout_s = parts.hostname, parts.port, timeout_s
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        """(status, body); raises OSError / http.client errors when the connection fails."""
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, self.timeout_s)
        try:
            self.connection.request(method, path, body=body, headers=headers or {})
            response = self.connection.getresponse()
            return response.status, response.read()
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


# --- load -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    sent_s: float  # since the load started
    done_s: float
    status: int  # 0: connection error
    valid: bool


def run_load(
    server: TorchServe,
    image: bytes,
    reference: dict,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    on_start=None,
) -> list[Outcome]:
    """`requests` predictions (or as many as fit in `duration_s`) from `concurrency` threads."""
    path = urlsplit(server.predictions_url).path
    headers = predict_headers(server.inference_token)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    remaining = [requests if requests is not None else float("inf")]
    started = time.perf_counter()

    def worker() -> None:
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
                valid = status == 200 and same_answer(body, reference)
            except (OSError, http.client.HTTPException):
                status, valid = 0, False
            outcome = Outcome(now, time.perf_counter() - started, status, valid)
            with lock:
                outcomes.append(outcome)
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    if on_start is not None:
        on_start(started)
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.done_s)


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
    latencies = sorted(o.done_s - o.sent_s for o in outcomes)
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
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "worker_pids": worker_pids,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_growth": {pid: round(g, 4) for pid, g in growth.items()},
        "max_rss_growth": round(max(growth.values(), key=abs), 4),
        "warmup_requests": args.warmup,
    }


# --- faults ---------------------------------------------------------------------------------
def wait_for_new_worker(server: TorchServe, old_pids: list[int], timeout_s=120) -> int | None:
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

        def start_killer(load_started: float) -> None:
            threading.Thread(target=killer, args=(load_started,), daemon=True).start()

        outcomes = run_load(
            server, image, reference, args.concurrency, duration_s=args.kill_load_s,
            on_start=start_killer,
        )  # fmt: skip
        killed = kill_at["s"]
        failed = [o for o in outcomes if not o.valid]
        resumed = [o for o in outcomes if o.valid and o.sent_s >= killed]
        ok_after = bool(resumed) and all(o.valid for o in outcomes if o.sent_s >= resumed[0].sent_s)
        kills.append(
            {
                "old_pid": old_pid,
                "workers_before": pids_before,
                "new_pid": kill_at.get("new_pid"),
                "requests": len(outcomes),
                "failed": len(failed),
                "failed_statuses": count_statuses(failed),
                "failed_sent_before_kill": sum(o.sent_s < killed for o in failed),
                "new_worker_ready_after_s": round(kill_at["ready_s"] - killed, 2),
                "serving_resumed_after_s": round(resumed[0].done_s - killed, 2)
                if resumed
                else None,
                "all_ok_after_resume": ok_after,
            }
        )
    return {
        "passed": all(k["new_pid"] and k["serving_resumed_after_s"] is not None for k in kills)
        and all(k["all_ok_after_resume"] for k in kills)
        # Only requests in flight at the kill may fail: at most one batch per connection.
        and all(k["failed"] <= args.concurrency for k in kills),
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


# --- security -------------------------------------------------------------------------------
def listening_sockets(pids: list[int]) -> list[str]:
    """'address:port' of every TCP socket in LISTEN state owned by these processes."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.append(f"{address}:{int(port_hex, 16)}")
    return sorted(found)


def check_security(server, image, reference, args) -> dict:
    inference, management = server.inference_url, server.management_url
    token, mgmt_token = server.inference_token, server.management_token
    png = {"Content-Type": "application/octet-stream"}
    calls = {
        "predict, no token": ("POST", f"{server.predictions_url}", image, png),
        "explain, no token": ("POST", f"{server.explanations_url}", image, png),
        "predict v2, no token": ("POST", f"{inference}/v2/models/{MODEL_NAME}/infer", b"{}", {}),
        "predict, wrong token": (
            "POST", server.predictions_url, image, {**png, "Authorization": "Bearer not-the-key"},
        ),
        "predict, management token": (
            "POST", server.predictions_url, image, {**png, "Authorization": f"Bearer {mgmt_token}"},
        ),
        "list models, no token": ("GET", f"{management}/models", None, {}),
        "describe model, no token": ("GET", f"{management}/models/{MODEL_NAME}", None, {}),
        "scale workers, no token": ("PUT", f"{management}/models/{MODEL_NAME}?min_worker=4",
                                    None, {}),
        "unregister, no token": ("DELETE", f"{management}/models/{MODEL_NAME}", None, {}),
        "list models, inference token": (
            "GET", f"{management}/models", None, {"Authorization": f"Bearer {token}"},
        ),
        "models list on inference port, no token": ("GET", f"{inference}/models", None, {}),
    }  # fmt: skip
    refused = {}
    for name, (method, url, body, headers) in calls.items():
        status, _ = http_call(method, url, body, headers)
        refused[name] = status
    register = {}
    for name, url in (
        ("https URL", "https://example.com/fashion-cnn.mar"),
        ("file URL outside the store", "file:///etc/passwd"),
        ("archive name", "fashion-cnn.mar"),
    ):
        query = f"url={url}&model_name=evil&initial_workers=1"
        status, _ = http_call(
            "POST", f"{management}/models?{query}", None, {"Authorization": f"Bearer {mgmt_token}"}
        )
        register[name] = status
    models = json.loads(
        http_call("GET", f"{management}/models", None, {"Authorization": f"Bearer {mgmt_token}"})[1]
    )
    names = sorted(m["modelName"] for m in models.get("models", []))
    pids = [server.frontend_pid(), *server.ready_worker_pids()]
    sockets = listening_sockets([pid for pid in pids if pid])
    loopback = all(ipaddress.ip_address(s.rsplit(":", 1)[0]).is_loopback for s in sockets)
    return {
        "passed": all(status == 400 for status in refused.values())
        and all(400 <= status < 500 for status in register.values())
        and names == [MODEL_NAME]
        and bool(sockets)
        and loopback,
        "refused_without_valid_token": refused,
        "register_attempts": register,
        "models_after": names,
        "listening": sockets,
        "all_loopback": loopback,
    }


# --- bad-input corpus -----------------------------------------------------------------------
def _png(width: int, height: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels, with a tiny IDAT (a decompression bomb
    shape: the header alone must get it refused)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb(side: int) -> bytes:
    """A 1x1 GIF whose logical screen claims side x side pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def bad_requests(image: bytes, max_request_size: int) -> list[tuple]:
    """(name, method, path suffix, body, headers, expected status) for each hostile request.

    Paths are relative to the inference address; {p} is /predictions/<model>, {e} the
    explanations endpoint."""
    octet = {"Content-Type": "application/octet-stream"}
    as_json = {"Content-Type": "application/json"}
    b64 = base64.b64encode(image).decode()
    text = {"Content-Type": "text/plain"}
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, format="JPEG")
    boundary = "reliabilityboundary"
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}

    def with_image(**options) -> bytes:  # options travel in the JSON body: TorchServe 0.12
        return json.dumps({"data": b64, **options}).encode()  # drops /predictions' query

    text_b64 = json.dumps({"data": base64.b64encode(b"hi").decode()}).encode()
    two_instances = json.dumps({"instances": [{"data": b64}, {"data": b64}]}).encode()
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    too_big = b"\0" * (max_request_size + 1024)
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="x.png"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nnot an image at all\r\n--{boundary}--\r\n"
    ).encode()
    return [
        ("empty body", "POST", "{p}", b"", octet, 400),
        ("random bytes", "POST", "{p}", os.urandom(2048), octet, 400),
        ("text instead of image", "POST", "{p}", b"hello, model", text, 400),
        ("truncated PNG", "POST", "{p}", image[: len(image) // 2], octet, 400),
        ("PNG signature only", "POST", "{p}", image[:8], octet, 400),
        ("truncated JPEG", "POST", "{p}", jpeg.getvalue()[:300], octet, 400),
        ("PNG decompression bomb 100k x 100k", "POST", "{p}", png_bomb(100_000), octet, 413),
        ("PNG 7000 x 7000 header (49 MP)", "POST", "{p}", png_bomb(7000), octet, 413),
        ("GIF header 65535 x 65535", "POST", "{p}", gif_bomb(65535), octet, 413),
        ("zero-size PNG header", "POST", "{p}", png_bomb(0), octet, 400),
        ("body over max_request_size", "POST", "{p}", too_big, octet, 413),
        ("invalid JSON", "POST", "{p}", b'{"data": ', as_json, 400),
        ("JSON without image", "POST", "{p}", b'{"image": "x"}', as_json, 400),
        ("JSON data not base64", "POST", "{p}", b'{"data": "%%%not base64%%%"}', as_json, 400),
        ("JSON data a number", "POST", "{p}", b'{"data": 12345}', as_json, 400),
        ("JSON top-level list", "POST", "{p}", b'[1, 2, 3]', as_json, 400),
        ("JSON base64 of text", "POST", "{p}", text_b64, as_json, 400),
        ("KServe v1 empty instances", "POST", "{p}", b'{"instances": []}', as_json, 400),
        ("KServe v1 two instances", "POST", "{p}", two_instances, as_json, 422),
        ("data URL of garbage", "POST", "{p}", b"data:image/png;base64,AAAAAAAA", octet, 400),
        ("multipart with a non-image file", "POST", "{p}", multipart, form, 400),
        ("topk 0", "POST", "{p}", with_image(topk=0), as_json, 422),
        ("topk 11", "POST", "{p}", with_image(topk=11), as_json, 422),
        ("topk 'abc'", "POST", "{p}", with_image(topk="abc"), as_json, 400),
        ("invert 'maybe'", "POST", "{p}", with_image(invert="maybe"), as_json, 400),
        ("explain target 'Unicorn'", "POST", "{e}", with_image(target="Unicorn"), as_json, 422),
        ("explain target 99", "POST", "{e}", with_image(target=99), as_json, 422),
        ("explain steps 100000", "POST", "{e}", with_image(steps=100000), as_json, 422),
        ("explain steps -1", "POST", "{e}", with_image(steps=-1), as_json, 422),
        ("header X-Topk: 0", "POST", "{p}", image, {**octet, "X-Topk": "0"}, 422),
        ("header X-Steps: many, explain", "POST", "{e}", image, {**octet, "X-Steps": "many"}, 400),
        ("binary body sent as a urlencoded form", "POST", "{p}", image, urlencoded, 400),
        ("unknown model", "POST", "/predictions/no-such-model", image, octet, 404),
        ("unknown model version", "POST", "{p}/99.9", image, octet, 404),
        ("header of 64 KiB", "POST", "{p}", image, {**octet, "X-Junk": "a" * 65536}, 400),
        ("URL of 64 KiB", "POST", "{p}?q=" + "a" * 65536, image, octet, 400),
    ]  # fmt: skip


def check_corpus(server, image, reference, args) -> dict:
    max_request_size = 1048576
    for line in (REPO_ROOT / "config.properties").read_text().splitlines():
        if line.strip().startswith("max_request_size="):
            max_request_size = int(line.split("=", 1)[1])
    token = server.inference_token
    predict_path = urlsplit(server.predictions_url).path
    explain_path = urlsplit(server.explanations_url).path
    pid_before = server.ready_worker_pids()
    cases, good = [], []
    for name, method, path, body, headers, expected in bad_requests(image, max_request_size):
        path = path.replace("{p}", predict_path).replace("{e}", explain_path)
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
            json_error = isinstance(parsed, dict) and "message" in parsed
        except ValueError:
            json_error = False
        cases.append(
            {
                "name": name,
                "expected": expected,
                "status": status,
                "json_error": json_error,
                "ok": (status == expected and json_error)
                or (name in RESET_ALLOWED and status == 0 and "reset" in str(answer)),
                "body": answer[:200].decode("utf-8", "replace"),
            }
        )
        status, answer = http_call("POST", server.predictions_url, image, predict_headers(token))
        good.append(status == 200 and same_answer(answer, reference))
    pid_after = server.ready_worker_pids()
    for case in cases:
        if not case["ok"] and case["name"] in KNOWN_UPSTREAM:
            case["known_upstream"] = KNOWN_UPSTREAM[case["name"]]
    unexpected = [c for c in cases if not c["ok"] and "known_upstream" not in c]
    return {
        "passed": not unexpected and all(good) and pid_before == pid_after,
        "cases": len(cases),
        "as_expected": sum(c["ok"] for c in cases),
        "server_errors": [c["name"] for c in cases if c["status"] >= 500],
        "unexpected": unexpected,
        "known_upstream": [c for c in cases if "known_upstream" in c],
        "good_requests_ok": f"{sum(good)}/{len(good)}",
        "worker_pid_before": pid_before,
        "worker_pid_after": pid_after,
        "all": cases,
    }


# --- main -----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=DEFAULT_EXPORT_DIR,
        help="model.pt + index_to_name.json (default artifacts/export)",
    )
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="a good request's PNG")
    parser.add_argument(
        "--requests", type=int, default=10_000, help="predictions in the load check (default 10000)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="predictions before the RSS 'before' reading (default 500)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="default 32")
    parser.add_argument("--kills", type=int, default=1, help="worker kills (default 1)")
    parser.add_argument(
        "--kill-after-s", type=float, default=2, help="seconds of load before each kill (default 2)"
    )
    parser.add_argument(
        "--kill-load-s",
        type=float,
        default=12,
        help="seconds of load around each kill (default 12)",
    )
    parser.add_argument(
        "--checks",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="which checks to run (default all)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="TorchServe run directory (default: a new temporary one)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    return parser.parse_args(argv)  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.export_dir / "model.pt").is_file():
        print(f"no model at {args.export_dir}/model.pt: export one (python -m training export)")
        return 2
    image = args.image.read_bytes()
    run_dir = args.run_dir or temp_dir("reliability-") / "run"
    server = TorchServe(run_dir, args.export_dir, env={"MODEL_LOG_LEVEL": "info"})
    results: dict = {"run_dir": str(run_dir), "load_average_at_start": os.getloadavg()}
    print(f"TorchServe in {run_dir}", flush=True)
    with server:
        status, body = http_call(
            "POST", server.predictions_url, image, predict_headers(server.inference_token)
        )
        if status != 200:
            print(f"the reference prediction failed: {status} {body[:300]!r}")
            return 1
        reference = json.loads(body)
        checks = {
            "security": check_security,
            "corpus": check_corpus,
            "load": check_load,
            "kill": check_kill,
            "restart": check_restart,
        }
        for name in CHECKS:
            if name not in args.checks:
                continue
            started = time.perf_counter()
            print(f"{name}...", flush=True)
            try:
                results[name] = checks[name](server, image, reference, args)
            except Exception as error:  # a crashed check is a failed check, the rest still run
                results[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
            results[name]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name}: {'PASS' if results[name]['passed'] else 'FAIL'}", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "corpus"}, indent=2))
    if "corpus" in results:
        corpus = {k: v for k, v in results["corpus"].items() if k != "all"}
        print(json.dumps({"corpus": corpus}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(results[name]["passed"] for name in args.checks) else 1


if __name__ == "__main__":
    sys.exit(main())

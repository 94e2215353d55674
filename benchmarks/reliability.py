"""Reliability checks against a real server, started the way users start it (serve.sh), on
TorchServe or on the kserve runtime (the same archive, the same core).

    python -m benchmarks.reliability                     # all checks on TorchServe, 10,000 requests
    python -m benchmarks.reliability --runtime kserve    # the same checks on the kserve runtime
    python -m benchmarks.reliability --runtime torchserve kserve   # both, one after the other
    python -m benchmarks.reliability --requests 500 --kills 1 --checks load corpus

Checks (each passes, fails, or is skipped where the runtime lacks what it needs; the exit
status is 1 if any fails):
- security: without the right token every inference and management call is refused (the
  runtime's own status: 400 on TorchServe 0.12, 401 on kserve), a wrong or swapped token too;
  TorchServe registers no model from a URL; on kserve the model repository (REST and gRPC)
  is closed to the inference key and gRPC calls need it; every port the server listens on
  is bound to loopback;
- corpus: >= 25 malformed or hostile requests each get their 4xx JSON error, none a 5xx,
  the workers are never restarted (same pids), and good requests in between all succeed;
  with both runtimes, the cases they answered differently are listed;
- load: N predictions at concurrency C all answer 200 with a valid body (same answer as a
  reference request); the worker's RSS after is within 10 % of before (after a warm-up);
- kill: SIGKILL a worker mid-load: TorchServe's frontend or the kserve supervisor starts a
  new one; failed requests are counted and the time until predictions succeed again is
  measured;
- update (TorchServe only: the kserve runtime serves one version per start): under load at
  concurrency C the whole time, serve.sh update to a second version (the served model with
  its last bias moved), then serve.sh rollback: every answer is a 200 from the old or the
  new version (X-Model-Version) with that version's body, worker memory is back to one
  model's worth after each swap, and nobody notices: p99 <= --update-p99-ms and the slowest
  request <= --update-slowest-ms over the whole window, reported per phase (benchmarks/update.py);
- restart: serve.sh stop + start: the model comes back with no manual step;
- grpc (kserve only: TorchServe's OIP gRPC is not the stock service): --grpc-requests
  ModelInfer calls at concurrency C with stock tritonclient.grpc, none failed, each the REST
  answer; one call with 16 images answers all 16; an explanation (benchmarks/grpc_load.py).
Results go to --out as JSON (another runtime's beside it, reliability-<runtime>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.cli import command_line, temp_dir
from benchmarks.faults import check_kill, check_restart
from benchmarks.grpc_load import check_grpc
from benchmarks.hostile import check_corpus, corpus_differences
from benchmarks.traffic import check_load, predict_headers
from benchmarks.update import check_update
from tests.support.security import check_security
from tests.support.servers import REPO_ROOT, KServeRuntime, TorchServe, http_call

DEFAULT_OUT = REPO_ROOT / "artifacts" / "reliability" / "reliability.json"
CHECKS = {
    "security": check_security,
    "corpus": check_corpus,
    "load": check_load,
    "kill": check_kill,
    "update": check_update,
    "restart": check_restart,
    "grpc": check_grpc,
}
RUNTIMES = {"torchserve": TorchServe, "kserve": KServeRuntime}
# Checks only one runtime can run, and why the other skips them.
ONLY_ON = {
    "update": ("torchserve", "serve.sh update/rollback swap versions through TorchServe's "
               "management API; the kserve runtime serves one version per start"),
    "grpc": ("kserve", "TorchServe 0.12's OIP gRPC is not the stock inference."
             "GRPCInferenceService (pytorch/serve#3394): tritonclient.grpc gets UNIMPLEMENTED"),
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = command_line(__doc__)
    parser.add_argument(
        "--requests", type=int, default=10_000, help="predictions in the load check (default 10000)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="predictions before the RSS 'before' reading (default 500)",
    )
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=list(RUNTIMES),
        default=["torchserve"],
        help="the runtime(s) to check, one after the other (default torchserve)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="default 32")
    parser.add_argument(
        "--grpc-requests",
        type=int,
        default=10_000,
        help="ModelInfer calls in the grpc check (default 10000)",
    )
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
        "--update-settle-s",
        type=float,
        default=5,
        help="update check: seconds of load before the update, between it and the rollback, "
        "and after (default 5)",
    )
    parser.add_argument(
        "--update-concurrency",
        type=int,
        default=16,
        help="update check: clients sending predictions the whole time (default 16)",
    )
    parser.add_argument(
        "--update-p99-ms",
        type=float,
        default=250,
        help="update check: p99 latency over the whole window, at most (default 250)",
    )
    parser.add_argument(
        "--update-slowest-ms",
        type=float,
        default=1000,
        help="update check: the slowest request of the whole window, at most (default 1000)",
    )
    parser.add_argument(
        "--checks",
        nargs="+",
        choices=list(CHECKS),
        default=list(CHECKS),
        help="which checks to run (default all)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="the server's run directory, <dir>/<runtime> with several runtimes "
        "(default: a new temporary one)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results (TorchServe's; another runtime's go beside it, <name>-<runtime>.json)",
    )
    return parser.parse_args(argv)  # fmt: skip


def out_path(out: Path, runtime: str) -> Path:
    return out if runtime == "torchserve" else out.with_name(f"{out.stem}-{runtime}{out.suffix}")


def run_checks(runtime: str, args, image: bytes) -> dict:
    """Start `runtime` on the model, run the chosen checks, stop it; the results."""
    run_dir = args.run_dir or temp_dir("reliability-") / "run"
    if args.run_dir and len(args.runtime) > 1:
        run_dir = args.run_dir / runtime
    server = RUNTIMES[runtime](run_dir, args.export_dir, env={"MODEL_LOG_LEVEL": "info"})
    results: dict = {
        "runtime": runtime,
        "run_dir": str(run_dir),
        "load_average_at_start": os.getloadavg(),
    }
    print(f"{runtime} in {run_dir}", flush=True)
    try:
        with server:
            checks_on(server, args, image, results)
    except (RuntimeError, subprocess.TimeoutExpired) as error:  # serve.sh start or stop failed
        results["server_error"] = f"{type(error).__name__}: {error}"
        print(f"{runtime}: {results['server_error']}", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    return results


def checks_on(server, args, image: bytes, results: dict) -> None:
    """The chosen checks, in order, against a running server; into `results`."""
    status, body = http_call(
        "POST", server.predictions_url, image, predict_headers(server.inference_token)
    )
    if status != 200:
        print(f"the reference prediction failed: {status} {body[:300]!r}")
        results["reference_failed"] = {
            "status": status,
            "body": body[:300].decode("utf-8", "replace"),
        }
        return
    reference = json.loads(body)
    for name, check in CHECKS.items():
        if name not in args.checks:
            continue
        only_on, reason = ONLY_ON.get(name, (server.runtime, ""))
        if only_on != server.runtime:
            results[name] = {"passed": None, "skipped": reason}
            print(f"{name}: SKIP ({reason})", flush=True)
            continue
        started = time.perf_counter()
        print(f"{name}...", flush=True)
        try:
            results[name] = check(server, image, reference, args)
        except Exception as error:  # a crashed check is a failed check, the rest still run
            results[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {'PASS' if results[name]['passed'] else 'FAIL'}", flush=True)


def verdict(result: dict | None) -> str:
    if result is None:
        return "-"
    return "SKIP" if result.get("skipped") else "PASS" if result["passed"] else "FAIL"


def passed(results: dict, checks: list[str]) -> bool:
    """The server started and stopped, the reference answered, and no chosen check failed
    (a skipped one does not count)."""
    if "reference_failed" in results or "server_error" in results:
        return False
    return all(results[name].get("skipped") or bool(results[name]["passed"]) for name in checks)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.export_dir / "model.pt").is_file():
        print(f"no model at {args.export_dir}/model.pt: export one (python -m training export)")
        return 2
    image = args.image.read_bytes()
    runs: dict[str, dict] = {}
    for runtime in dict.fromkeys(args.runtime):  # each once, in the order given
        results = runs[runtime] = run_checks(runtime, args, image)
        theirs = runs.get("torchserve", {}).get("corpus", {})
        ours = results.get("corpus", {})
        if runtime != "torchserve" and "all" in theirs and "all" in ours:
            ours["differences_from_torchserve"] = corpus_differences(theirs, ours)
        out = out_path(args.out, runtime)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in results.items() if k != "corpus"}, indent=2))
        if "corpus" in results:
            corpus = {k: v for k, v in results["corpus"].items() if k != "all"}
            print(json.dumps({"corpus": corpus}, indent=2))
        print(f"wrote {out}")
    print("\n| check | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs))
    for name in args.checks:
        print(f"| {name} | " + " | ".join(verdict(r.get(name)) for r in runs.values()) + " |")
    return 0 if all(passed(results, args.checks) for results in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

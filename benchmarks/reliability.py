"""Reliability checks against a real TorchServe, started the way users start it (serve.sh).

    python -m benchmarks.reliability                     # all checks, 10,000 requests
    python -m benchmarks.reliability --requests 500 --kills 1 --checks load corpus

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
- update: under load at concurrency C the whole time, serve.sh update to a second version
  (the served model with its last bias moved), then serve.sh rollback: every answer is a 200
  from the old or the new version (X-Model-Version) with that version's body, and worker
  memory is back to one model's worth after each swap (benchmarks/update.py);
- restart: serve.sh stop + start: the model comes back with no manual step.
Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.faults import check_kill, check_restart
from benchmarks.hostile import check_corpus
from benchmarks.security import check_security
from benchmarks.servers import (
    REPO_ROOT,
    TorchServe,
    command_line,
    http_call,
    temp_dir,
)
from benchmarks.traffic import check_load, predict_headers
from benchmarks.update import check_update

DEFAULT_OUT = REPO_ROOT / "artifacts" / "reliability" / "reliability.json"
CHECKS = {
    "security": check_security,
    "corpus": check_corpus,
    "load": check_load,
    "kill": check_kill,
    "update": check_update,
    "restart": check_restart,
}


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
        "--update-settle-s",
        type=float,
        default=5,
        help="update check: seconds of load before the update, between it and the rollback, "
        "and after (default 5)",
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
        for name, check in CHECKS.items():
            if name not in args.checks:
                continue
            started = time.perf_counter()
            print(f"{name}...", flush=True)
            try:
                results[name] = check(server, image, reference, args)
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

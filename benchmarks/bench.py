"""Benchmark the FashionMNIST model in-process, behind TorchServe, the kserve runtime and
LitServe, in one run.

    python -m benchmarks.bench                      # full run
    python -m benchmarks.bench --markdown artifacts/bench/bench.md   # also the tables as Markdown
    python -m benchmarks.bench --duration 2 --explain-duration 2 --in-process-s 1
    python -m benchmarks.bench --profile            # where one request's time goes
    python -m benchmarks.bench --variant 2workers:minWorkers=2,maxWorkers=2 ...

In-process (benchmarks.inprocess; one process, one torch thread: TorchServeHandler.handle,
initialized as in a worker, on raw image bodies, then the worker's json.dumps): images/s at
batch 1 and at the served batch size; the machine's ceiling (one such process per core at
the served batch size, summed); integrated gradients per image.
Served (tests.support.servers: TorchServe via scripts/archive.sh + scripts/serve.sh with the
repo's config.properties and handler/model-config.yaml; the kserve runtime from the same
archive via serve.sh start --runtime kserve; LitServe via benchmarks/litserve_app.py): wrk
pinned to one core POSTs one sample image for a fixed time at each concurrency
(benchmarks.load); for TorchServe and the kserve runtime the same series (PNG bytes,
explanations, JSON base64, OIP v2 JSON) and the CPU milliseconds per request of TorchServe's
Java frontend or the kserve supervisor, and of the workers; for the kserve runtime also OIP
gRPC ModelInfer from stock tritonclient threads in a process pinned to wrk's core
(benchmarks.grpc_load; a Python client, so its own limit shows at high rates). Prints the
tables and the targets (benchmarks.report) and writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from benchmarks.cli import command_line, config_with, handler_dir_with, temp_dir
from benchmarks.grpc_load import GRPC_JSON_PREFIX
from benchmarks.inprocess import Pipeline, in_process, prepare
from benchmarks.load import CONCURRENCIES, LoadSettings, load_points, summary
from benchmarks.report import check_targets, markdown, table
from fashion_serve.image import to_batch_tensor
from tests.support.servers import (
    REPO_ROOT,
    KServeRuntime,
    TorchServe,
    free_ports,
    http_call,
    model_config,
)

DEFAULT_OUT = REPO_ROOT / "artifacts" / "bench" / "bench.json"
PARTS = ("in-process", "torchserve", "kserve", "litserve")


@dataclass
class LitServe:
    """benchmarks/litserve_app.py on a free loopback port (JSON base64 body, /predict)."""

    export_dir: Path
    workers: int = 1
    max_batch_size: int = 1
    batch_timeout_ms: float = 0.0
    log_file: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def predictions_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def __enter__(self) -> LitServe:
        self.port = self.port or free_ports(1)[0]
        command = [
            sys.executable,
            "-m",
            "benchmarks.litserve_app",
            "--export-dir",
            str(self.export_dir),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--max-batch-size",
            str(self.max_batch_size),
            "--batch-timeout-ms",
            str(self.batch_timeout_ms),
        ]
        log = open(self.log_file or os.devnull, "ab")  # closed in __exit__
        self._log = log
        env = dict(os.environ, OMP_NUM_THREADS="1")
        # Own process group: its API server and inference workers are stopped together.
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LitServe exited with {self.process.returncode}")
            try:
                if http_call("GET", f"http://127.0.0.1:{self.port}/health", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("LitServe not healthy after 120 s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def litserve_configs() -> dict:
    """LitServe without batching, and with TorchServe's own workers and batching
    (handler/model-config.yaml), so both servers get the same settings."""
    config = model_config()
    workers = int(config.get("minWorkers", 1))
    batch_size = int(config.get("batchSize", 1))
    delay_ms = float(config.get("maxBatchDelay", 0))
    return {
        "1 worker, no batching": dict(workers=1, max_batch_size=1, batch_timeout_ms=0.0),
        f"{workers} workers, batch {batch_size} / {delay_ms:g} ms": dict(
            workers=workers, max_batch_size=batch_size, batch_timeout_ms=delay_ms
        ),
    }


def served_run(
    args,
    name: str,
    overrides: dict,
    env: dict,
    json_body: Path,
    full: bool,
    server_class: type[TorchServe] = TorchServe,
):
    """Serve with `overrides` (model-config keys, config.<key>) and serve.sh `env`, then load
    predictions (and with `full`, explanations, the JSON body and the Open Inference Protocol
    body, `v2_body_path(json_body)`) at each concurrency. `server_class` KServeRuntime: the
    same archive on the kserve runtime (and with `full`, its OIP gRPC series too)."""
    # archive.sh passes extra files as a comma-separated list: keep the path plain.
    runtime = server_class.runtime
    work = temp_dir(f"bench-{runtime}-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}-")
    config_keys = {k[7:]: v for k, v in overrides.items() if k.startswith("config.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("config.")}
    if config_keys:  # config.<key>=value: a copy of config.properties with these keys
        env = {**env, "TS_CONFIG": str(config_with(config_keys, work))}
    handler_dir = handler_dir_with(overrides, work) if overrides else None
    serve_env = {"MODEL_LOG_LEVEL": args.model_log_level} if args.model_log_level else {}
    serve_env.update(env)
    server = server_class(work / "run", args.export_dir, handler_dir=handler_dir, env=serve_env)
    print(f"{runtime} [{name}] {overrides or ''} {env or ''}", flush=True)
    result = {"overrides": overrides, "env": serve_env}
    with server:
        token = server.inference_token
        worker_pids = server.ready_worker_pids()
        result["workers"] = len(worker_pids)
        result["config"] = model_config(handler_dir)
        # TorchServe's Java frontend (warm_up waits for its JIT), or the kserve supervisor,
        # which only watches its workers (they share its HTTP socket).
        front = "frontend" if runtime == "torchserve" else "supervisor"
        processes = {front: [server.frontend_pid()], "workers": worker_pids}
        octet, json_type = "application/octet-stream", "application/json"
        predict, explain = server.predictions_url, server.explanations_url
        series = [("predict", "predictions", predict, args.image, octet, args.duration)]
        if full or args.variant_explain:
            series.append(
                ("explain", "explanations", explain, args.image, octet, args.explain_duration)
            )
        if full:
            if not args.no_json_body:
                title = "predictions, JSON base64 body (LitServe's input)"
                series.append(("predict_json", title, predict, json_body, json_type, args.duration))
            if not args.no_v2_body:
                title = "predictions, Open Inference Protocol (v2) JSON, one image"
                v2_url = f"{server.inference_url}/v2/models/{server.model}/infer"
                v2_body = v2_body_path(json_body)
                series.append(("predict_v2", title, v2_url, v2_body, json_type, args.duration))
        result["warmup"] = {}
        for key, title, url, body, content_type, seconds in series:
            print(f"  {title}:", flush=True)
            result[key], result["warmup"][key] = load_points(
                url,
                body,
                token,
                content_type,
                args.concurrency,
                seconds,
                load_settings(args),
                processes,
            )
        if full and runtime == "kserve" and not args.no_grpc:
            print("  OIP gRPC ModelInfer (tritonclient, pinned to wrk's core):", flush=True)
            result["grpc"] = grpc_points(args, server)
    return result


def grpc_points(args, server: KServeRuntime) -> dict:
    """benchmarks.grpc_load in its own process (tritonclient and kserve must not share one),
    pinned to the core wrk uses, at each concurrency for --duration seconds."""
    command = [
        sys.executable, "-m", "benchmarks.grpc_load",
        "--address", server.grpc_address, "--rest", server.inference_url,
        "--key-file", str(server.run_dir / "key_file.json"), "--model", server.model,
        "--image", str(args.image), "--duration", str(args.duration),
        "--warmup-s", str(args.warmup_s),
        "--concurrency", *map(str, args.concurrency),
    ]  # fmt: skip
    if args.wrk_cpu != "none" and shutil.which("taskset"):
        command = ["taskset", "-c", args.wrk_cpu, *command]
    seconds = len(args.concurrency) * (args.duration + 5) + args.warmup_s + 120
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(GRPC_JSON_PREFIX):
            points = json.loads(line[len(GRPC_JSON_PREFIX) :])
            for key, point in points.items():
                print(f"  {key}: {summary(point)}", flush=True)
            return points
    raise RuntimeError(f"grpc_load gave no result ({done.returncode}): {done.stderr[-2000:]}")


def v2_body_path(json_body: Path) -> Path:
    """The Open Inference Protocol body file written beside the JSON one."""
    return json_body.with_name("request-v2.json")


def load_settings(args) -> LoadSettings:
    return LoadSettings(args.warmup_s, args.warmup_max_s, args.wrk_cpu, args.wrk_timeout_s)


def litserve_runs(args, json_body: Path) -> dict:
    """The peer with no batching, and with TorchServe's workers and batching."""
    results = {}
    for name, config in litserve_configs().items():
        print(f"LitServe [{name}]", flush=True)
        log_file = (
            args.out.parent / f"litserve-{config['workers']}w-b{config['max_batch_size']}.log"
        )
        with LitServe(export_dir=args.export_dir, log_file=log_file, **config) as server:
            points, warmup = load_points(
                server.predictions_url,
                json_body,
                "",
                "application/json",
                args.concurrency,
                args.duration,
                load_settings(args),
            )
            results[name] = {"config": config, "predict": points, "warmup": warmup}
    return results


# --- profile --------------------------------------------------------------------------------
def profile(args, batch_size: int) -> None:
    """cProfile of TorchServeHandler.handle (the worker's path, without the socket) and
    torch.profiler of the model, at batch 1 and at the served batch size."""
    image_bytes = args.image.read_bytes()
    pipeline = Pipeline(args.export_dir, args.device, batch_size)
    for size in (1, batch_size):
        images = [image_bytes] * size
        for _ in range(20):
            pipeline.predict(images)
        calls = max(50, 2000 // size)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            pipeline.predict(images)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(18)  # the hot spots, whoever owns them
        # and the handler's own steps, by time spent under each (always listed, however noisy)
        stats.sort_stats("cumulative").print_stats(r"fashion_", 15)
        title = f"TorchServeHandler.handle + json.dumps, batch {size}, {calls} calls"
        print(f"=== cProfile: {title} ===")
        print(stream.getvalue())

    handler = pipeline.handler
    pixels, _ = prepare(handler, image_bytes)
    batch = to_batch_tensor(
        [pixels] * batch_size,
        handler.service.contract.mean,
        handler.service.contract.std,
        handler.service.device,
    )
    with torch.profiler.profile() as prof:
        for _ in range(50):
            handler.service.logits(batch)
    print(f"=== torch.profiler: FashionService.logits, batch {batch_size}, 50 calls ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


# --- main -----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = command_line(__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the tables as Markdown here"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device for the in-process part: cpu or cuda (skips without CUDA)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10,
        help="seconds per served prediction point (default 10)",
    )
    parser.add_argument(
        "--explain-duration",
        type=float,
        default=10,
        help="seconds per served explanation point (default 10)",
    )
    parser.add_argument(
        "--in-process-s",
        type=float,
        default=5,
        help="seconds per in-process measurement (default 5)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(CONCURRENCIES),
        help="connections per point (default 1 8 32)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for the in-process ceiling (default: one per core)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=5,
        help="one window of unrecorded load before each series (default 5)",
    )
    parser.add_argument(
        "--warmup-max-s",
        type=float,
        default=60,
        help="warm-up windows repeat until TorchServe's JIT settles, at most this long "
        "(default 60)",
    )
    parser.add_argument("--wrk-cpu", default="1", help="core wrk is pinned to (default 1)")
    parser.add_argument("--wrk-timeout-s", type=float, default=30, help="wrk request timeout")
    parser.add_argument(
        "--model-log-level",
        default=None,
        help="MODEL_LOG_LEVEL for serve.sh (default: serve.sh's own, info)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model-config.yaml key for the main TorchServe run and the kserve "
        "runtime's (handler.<key> for the handler section; env.<NAME> for serve.sh)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=V,KEY=V",
        help="extra TorchServe runs (predictions only) with these overrides "
        "(also config.<key> for config.properties, handler_source=<dir> for another handler)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=PARTS,
        help="parts to leave out",
    )
    parser.add_argument(
        "--variant-explain",
        action="store_true",
        help="--variant runs load explanations too (e.g. a candidate handler's)",
    )
    parser.add_argument(
        "--no-json-body",
        action="store_true",
        help="skip TorchServe's and the kserve runtime's series with LitServe's JSON base64 body",
    )
    parser.add_argument(
        "--no-v2-body",
        action="store_true",
        help="skip TorchServe's and the kserve runtime's Open Inference Protocol (v2) series",
    )
    parser.add_argument(
        "--no-grpc",
        action="store_true",
        help="skip the kserve runtime's OIP gRPC series",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print cProfile/torch.profiler of the worker path and exit",
    )
    return parser.parse_args(argv)


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """KEY=VALUE items. A model-config.yaml key's value reads as YAML would (8 -> int,
    true -> bool); config.<key>, env.<NAME> and handler_source values stay strings."""
    overrides, env = {}, {}
    for item in items:
        key, _, value = item.partition("=")
        if key.startswith("env."):
            env[key[4:]] = value
        elif key.startswith("config.") or key == "handler_source" or not value:
            overrides[key] = value
        else:
            overrides[key] = yaml.safe_load(value)
    return overrides, env


def machine() -> dict:
    def run(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "load_average_at_start": os.getloadavg(),
        "uptime": run("uptime"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_commit": run("git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here; nothing measured (skipped).")
        return 0
    if not (args.export_dir / "model.pt").is_file():
        print(f"no model at {args.export_dir}/model.pt: export one (python -m training export)")
        return 2
    batch_size = int(model_config().get("batchSize", 1))
    if args.profile:
        profile(args, batch_size)
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_body = args.out.parent / "request.json"
    image_b64 = base64.b64encode(args.image.read_bytes()).decode("ascii")
    json_body.write_text(json.dumps({"data": image_b64}))
    v2_tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [image_b64]}
    v2_body_path(json_body).write_text(json.dumps({"inputs": [v2_tensor]}))
    results: dict = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]),
        "machine": machine(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "explain_duration_s": args.explain_duration,
        "image": str(args.image),
        "served_batch_size": batch_size,
    }
    if "in-process" not in args.skip:
        print(f"In-process ({args.device}), {args.in_process_s} s per figure...", flush=True)
        results["in_process"] = in_process(
            args.export_dir, args.image.read_bytes(), batch_size, args.in_process_s,
            args.processes, args.device,
        )  # fmt: skip
    if args.device == "cpu":
        overrides, env = parse_overrides(args.set)
        if "torchserve" not in args.skip:
            results["torchserve"] = served_run(args, "main", overrides, env, json_body, True)
        for spec in args.variant:
            name, _, items = spec.partition(":")
            variant_overrides, variant_env = parse_overrides([i for i in items.split(",") if i])
            variant = served_run(args, name, variant_overrides, variant_env, json_body, False)
            results.setdefault("variants", {})[name] = variant
        if "kserve" not in args.skip:
            results["kserve"] = served_run(
                args, "main", overrides, env, json_body, True, KServeRuntime
            )
        if "litserve" not in args.skip:
            results["litserve"] = litserve_runs(args, json_body)
    results["targets"] = check_targets(results)
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    print(f"\nwrote {args.out}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

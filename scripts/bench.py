"""Benchmark the FashionMNIST model in-process, behind TorchServe and behind LitServe, in one run.

    .venv/bin/python scripts/bench.py                      # full run (~6 min on 2 cores)
    .venv/bin/python scripts/bench.py --duration 2 --explain-duration 2 --in-process-s 1
    .venv/bin/python scripts/bench.py --profile            # where one request's time goes
    .venv/bin/python scripts/bench.py --variant 2workers:minWorkers=2,maxWorkers=2 ...

In-process (one process, one torch thread: FashionHandler.handle, initialized as in a
worker, on raw image bodies: request parsing, decode, fit, tensor, model, softmax, top-k,
then the worker's json.dumps): images/s at batch 1 and at the served batch size; the
machine's ceiling (one such process per core at the served batch size, summed); integrated
gradients per image (attributions, rounding, heatmap PNG).
Served (TorchServe via scripts/archive.sh + scripts/serve.sh with the repo's
config.properties and handler/model-config.yaml; LitServe via scripts/litserve_app.py):
wrk pinned to one core POSTs one sample image for a fixed time at each concurrency; for
TorchServe predictions also the CPU milliseconds its Java frontend and its workers spend
per request. Prints a table, checks the targets, and writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from inprocess import initialized_handler, prepare, set_requests
from servers import (
    DEFAULT_EXPORT_DIR,
    DEFAULT_IMAGE,
    REPO_ROOT,
    LitServe,
    TorchServe,
    handler_dir_with,
    http_call,
    model_config,
    temp_dir,
    wrk,
)

from fashion_image import to_batch_tensor

DEFAULT_OUT = REPO_ROOT / "artifacts" / "bench" / "bench.json"
CONCURRENCIES = (1, 8, 32)
# Targets on the 2-core reference machine (see README, "Performance and reliability").
CEILING_FRACTION_TARGET = 0.80
P50_C1_EXTRA_MS_TARGET = 2.5
EXPLAIN_FRACTION_TARGET = 0.90
# Warm-up ends once the JVM's JIT compiler threads use at most this share of its CPU.
JIT_SETTLED_SHARE = 0.02


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


# --- in-process: the handler's own functions ------------------------------------------------
class Pipeline:
    """The worker's path, in-process: FashionHandler.handle on a batch of raw image bodies
    (request parsing, decode, fit, tensor, model, softmax, top-k or integrated gradients),
    then the json.dumps(indent=2) TorchServe's worker applies to each answer."""

    def __init__(self, export_dir: Path, device: str = "cpu", batch_size: int = 8) -> None:
        self.handler, self.context = initialized_handler(export_dir, batch_size, device)

    def _handle(self, images: list[bytes], explain: bool) -> list[str]:
        set_requests(self.context, len(images), explain=explain)
        answers = self.handler.handle([{"body": image} for image in images], self.context)
        return [json.dumps(answer, indent=2) for answer in answers]

    def predict(self, images: list[bytes]) -> list[str]:
        return self._handle(images, explain=False)

    def explain(self, images: list[bytes]) -> list[str]:
        return self._handle(images, explain=True)


def measure(call: Callable[[], object], images_per_call: int, duration_s: float) -> dict:
    """Call repeatedly for about `duration_s` after a warm-up; images/s and ms per call."""
    for _ in range(3):
        call()
    times = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    total = sum(times)
    return {
        "images_per_s": round(len(times) * images_per_call / total, 1),
        "calls": len(times),
        "batch_size": images_per_call,
        "p50_ms_per_call": round(statistics.median(times) * 1000, 3),
        "mean_ms_per_image": round(total / len(times) / images_per_call * 1000, 3),
    }


def _ceiling_worker(export_dir, device, image_bytes, batch_size, duration_s, barrier, results):
    pipeline = Pipeline(Path(export_dir), device, batch_size)
    torch.set_num_threads(1)
    images = [image_bytes] * batch_size
    for _ in range(5):
        pipeline.predict(images)
    barrier.wait()
    results.put(measure(lambda: pipeline.predict(images), batch_size, duration_s)["images_per_s"])


def machine_ceiling(
    export_dir: Path, device: str, image_bytes: bytes, batch_size: int, processes: int, seconds
) -> dict:
    """One single-thread process per core at the served batch size, all at once, summed."""
    context = mp.get_context("spawn")  # a clean torch per process, no forked thread pools
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_ceiling_worker,
            args=(str(export_dir), device, image_bytes, batch_size, seconds, barrier, results),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=seconds + 300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return {
        "images_per_s": round(sum(rates), 1),
        "processes": processes,
        "batch_size": batch_size,
        "per_process": rates,
    }


def in_process(args, batch_size: int) -> dict:
    image_bytes = args.image.read_bytes()
    pipeline = Pipeline(args.export_dir, args.device, batch_size)
    seconds = args.in_process_s
    results = {
        "batch_1": measure(lambda: pipeline.predict([image_bytes]), 1, seconds),
        f"batch_{batch_size}": measure(
            lambda: pipeline.predict([image_bytes] * batch_size), batch_size, seconds
        ),
        "explain_batch_1": measure(lambda: pipeline.explain([image_bytes]), 1, seconds),
        "ig_steps": pipeline.handler.limits.default_steps,
    }
    results["ceiling"] = machine_ceiling(
        args.export_dir, args.device, image_bytes, batch_size, args.processes, seconds
    )
    return results


# --- served ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat)."""
    return _cpu_from_stat(Path(f"/proc/{pid}/stat").read_text())


def _cpu_from_stat(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> dict[str, tuple[bool, float]]:
    """{thread id: (is a JIT compiler thread, CPU seconds)} for the live threads of `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        threads[task.name] = ("CompilerThre" in name, _cpu_from_stat(stat))  # C1/C2 CompilerThread
    return threads


def jit_cpu(pid: int) -> Callable[[], dict]:
    """Start counting; the returned function gives the CPU seconds process `pid` (a JVM)
    used since, and how much of it went to HotSpot's JIT compiler threads. Threads that
    ended meanwhile (HotSpot retires idle compiler threads) are counted as JIT time: the
    error can only make a warm-up longer."""
    before, total_before = _threads_cpu(pid), cpu_seconds(pid)

    def since() -> dict:
        after, process_s = _threads_cpu(pid), cpu_seconds(pid) - total_before
        used = {tid: cpu - before.get(tid, (False, 0.0))[1] for tid, (_, cpu) in after.items()}
        live_s = sum(used.values())
        # The process and its threads are read a moment apart and counted in clock ticks:
        # either sum may be ahead of the other by a tick or two.
        total = max(process_s, live_s)
        jit = sum(seconds for tid, seconds in used.items() if after[tid][0]) + total - live_s
        compilers = sum(is_jit for is_jit, _ in after.values())
        return {"cpu_s": total, "jit_cpu_s": jit, "compiler_threads": compilers}

    return since


def warm_up(url, body_file, token, content_type, connections, args, jvm_pid=None) -> list:
    """Unrecorded load before a series: 5 s at c1, then windows of --warmup-s at `connections`.

    TorchServe's frontend is a JVM, and its JIT compiler keeps compiling the request path for
    tens of seconds of load at these rates (here the first 5-10 s at c32 ran 14-28 % below the
    settled rate). So with `jvm_pid` a window repeats until the compiler threads used at most
    JIT_SETTLED_SHARE of the JVM's CPU in it (or under two clock ticks, when the JVM had little
    to do), for at most --warmup-max-s: the figures then describe a server that has been up
    for a while, as users' servers are.
    """
    window_s = max(1, round(args.warmup_s))  # wrk runs whole seconds
    # c1 first: TorchScript specializes on each batch shape it meets.
    wrk(url, body_file, token, content_type, 1, window_s, cpu=args.wrk_cpu)
    windows, started = [], time.perf_counter()
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    while True:
        since = jit_cpu(jvm_pid) if jvm_pid else None
        point = wrk(url, body_file, token, content_type, connections, window_s, cpu=args.wrk_cpu)
        window = {"seconds": window_s, "requests_per_s": point["requests_per_s"]}
        settled = True
        if since is not None:
            cpu = since()
            window.update(cpu, jit_cpu_share=round(cpu["jit_cpu_s"] / max(cpu["cpu_s"], tick_s), 4))
            if cpu["compiler_threads"] == 0:
                print("  warm-up: no JIT compiler threads in the frontend, one window only")
            limit = max(JIT_SETTLED_SHARE * cpu["cpu_s"], 2 * tick_s)
            settled = cpu["compiler_threads"] == 0 or cpu["jit_cpu_s"] <= limit
        windows.append(window)
        if settled or time.perf_counter() - started + window_s > args.warmup_max_s:
            break
    rates = ", ".join(f"{w['requests_per_s']:,.0f}" for w in windows)
    shares = ", ".join(f"{w['jit_cpu_share']:.1%}" for w in windows if "jit_cpu_share" in w)
    print(
        f"  warm-up: {len(windows)} x {window_s} s at c{connections}: {rates} req/s"
        + (f"; JIT share of the frontend's CPU: {shares}" if shares else ""),
        flush=True,
    )
    return windows


def load_points(
    url, body_file, token, content_type, concurrencies, duration_s, args, processes=None
) -> tuple[dict, list]:
    """One wrk run per concurrency, after warm_up; (points, warm-up windows).
    `processes` ({role: [pid, ...]}): also the CPU time each role spent per request during
    the run: TorchServe's Java "frontend" (warm_up waits for its JIT) and its "workers"."""
    jvm_pid = (processes or {}).get("frontend", [None])[0]
    warmup = warm_up(url, body_file, token, content_type, max(concurrencies), args, jvm_pid)
    settle(url, body_file, token, content_type)
    points = {}
    for connections in concurrencies:
        before = {role: sum(map(cpu_seconds, pids)) for role, pids in (processes or {}).items()}
        points[f"c{connections}"] = wrk(
            url,
            body_file,
            token=token,
            content_type=content_type,
            connections=connections,
            duration_s=duration_s,
            timeout_s=args.wrk_timeout_s,
            cpu=args.wrk_cpu,
        )
        point = points[f"c{connections}"]
        if processes and point["requests"]:
            point["cpu_ms_per_request"] = {
                role: round(
                    (sum(map(cpu_seconds, pids)) - before[role]) / point["requests"] * 1e3, 3
                )
                for role, pids in processes.items()
            }
        print(f"  c{connections}: {summary(point)}", flush=True)
        settle(url, body_file, token, content_type)
    return points, warmup


def settle(url: str, body_file: Path, token: str, content_type: str) -> None:
    """Wait until the requests wrk left queued at its deadline are served: one request
    queued behind them comes back (both servers answer in arrival order per worker)."""
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http_call("POST", url, body_file.read_bytes(), headers, timeout=120)


def summary(point: dict) -> str:
    errors = point["non_2xx"] + point["socket_errors"]
    return (
        f"{point['requests_per_s']:.0f} req/s, p50 {point['p50_ms']:.1f} ms, "
        f"p99 {point['p99_ms']:.1f} ms, errors {errors}"
    )


def torchserve_run(args, name: str, overrides: dict, env: dict, json_body: Path, full: bool):
    # archive.sh passes extra files as a comma-separated list: keep the path plain.
    work = temp_dir(f"bench-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}-")
    config_keys = {k[7:]: v for k, v in overrides.items() if k.startswith("config.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("config.")}
    if config_keys:  # config.<key>=value: a copy of config.properties with these keys
        env = {**env, "TS_CONFIG": str(config_with(config_keys, work))}
    handler_dir = handler_dir_with(overrides, work) if overrides else None
    serve_env = {"MODEL_LOG_LEVEL": args.model_log_level} if args.model_log_level else {}
    serve_env.update(env)
    server = TorchServe(work / "run", args.export_dir, handler_dir=handler_dir, env=serve_env)
    print(f"TorchServe [{name}] {overrides or ''} {env or ''}", flush=True)
    result = {"overrides": overrides, "env": serve_env}
    with server:
        token = server.inference_token
        worker_pids = server.ready_worker_pids()
        result["workers"] = len(worker_pids)
        result["config"] = model_config(handler_dir)
        processes = {"frontend": [server.frontend_pid()], "workers": worker_pids}
        octet, json_type = "application/octet-stream", "application/json"
        predict, explain = server.predictions_url, server.explanations_url
        series = [("predict", "predictions", predict, args.image, octet, args.duration)]
        if full:
            series.append(
                ("explain", "explanations", explain, args.image, octet, args.explain_duration)
            )
            if not args.no_json_body:
                title = "predictions, JSON base64 body (LitServe's input)"
                series.append(("predict_json", title, predict, json_body, json_type, args.duration))
        result["warmup"] = {}
        for key, title, url, body, content_type, seconds in series:
            print(f"  {title}:", flush=True)
            result[key], result["warmup"][key] = load_points(
                url, body, token, content_type, args.concurrency, seconds, args, processes
            )
    return result


def config_with(keys: dict, work_dir: Path) -> Path:
    """A copy of config.properties with `keys` replaced or added."""
    lines = (REPO_ROOT / "config.properties").read_text().splitlines()
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in keys]
    path = work_dir / "config.properties"
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in keys.items())]) + "\n")
    return path


def litserve_runs(args, json_body: Path) -> dict:
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
                args,
            )
            results[name] = {"config": config, "predict": points, "warmup": warmup}
    return results


# --- targets and table ----------------------------------------------------------------------
def check_targets(results: dict) -> list[dict]:
    local = results.get("in_process")
    served = results.get("torchserve")
    if not local or not served:
        return []
    checks = []
    last = f"c{max(results['concurrency'])}"
    first = f"c{min(results['concurrency'])}"
    ceiling = local["ceiling"]["images_per_s"]
    rps = served["predict"][last]["requests_per_s"]
    checks.append(
        {
            "target": f"served predictions at {last} >= {CEILING_FRACTION_TARGET:.0%} of ceiling",
            "value": f"{rps:.0f} / {ceiling:.0f} = {rps / ceiling:.0%}",
            "met": rps >= CEILING_FRACTION_TARGET * ceiling,
        }
    )
    one_image_ms = local["batch_1"]["p50_ms_per_call"]
    p50 = served["predict"][first]["p50_ms"]
    checks.append(
        {
            "target": f"p50 at {first} within {P50_C1_EXTRA_MS_TARGET} ms of in-process one image",
            "value": f"{p50:.2f} - {one_image_ms:.2f} = {p50 - one_image_ms:+.2f} ms",
            "met": p50 - one_image_ms <= P50_C1_EXTRA_MS_TARGET,
        }
    )
    for point in served["predict"]:
        peers = [run["predict"][point]["requests_per_s"] for run in results["litserve"].values()]
        if not peers:
            continue
        ours = served["predict"][point]["requests_per_s"]
        checks.append(
            {
                "target": f"ahead of LitServe (best config) at {point}",
                "value": f"{ours:.0f} vs {max(peers):.0f} req/s",
                "met": ours > max(peers),
            }
        )
    if "explain" in served:
        ig = local["explain_batch_1"]["images_per_s"]
        explained = served["explain"][last]["requests_per_s"]
        checks.append(
            {
                "target": f"served explanations at {last} >= {EXPLAIN_FRACTION_TARGET:.0%} "
                "of in-process IG",
                "value": f"{explained:.1f} / {ig:.1f} = {explained / ig:.0%}",
                "met": explained >= EXPLAIN_FRACTION_TARGET * ig,
            }
        )
    return checks


def table(results: dict) -> str:
    lines = []
    local = results.get("in_process")
    if local:
        lines += ["In-process (one process, one thread, the handler's functions)", ""]
        lines += ["| what | images/s | ms per call (p50) |", "|---|---:|---:|"]
        for key, label in (
            ("batch_1", "predict, batch 1"),
            ("explain_batch_1", "explain (IG), batch 1"),
        ):
            figure = local[key]
            lines.append(
                f"| {label} | {figure['images_per_s']:.1f} | {figure['p50_ms_per_call']:.2f} |"
            )
        batch_key = next(k for k in local if k.startswith("batch_") and k != "batch_1")
        lines.append(
            f"| predict, batch {local[batch_key]['batch_size']} | "
            f"{local[batch_key]['images_per_s']:.1f} | {local[batch_key]['p50_ms_per_call']:.2f} |"
        )
        ceiling = local["ceiling"]
        lines.append(
            f"| ceiling: {ceiling['processes']} processes x batch {ceiling['batch_size']}, summed "
            f"| {ceiling['images_per_s']:.1f} | |"
        )
        lines.append("")
    rows = []
    if "torchserve" in results:
        served = results["torchserve"]
        rows.append(("TorchServe predict (PNG bytes)", served["predict"]))
        if "predict_json" in served:
            rows.append(("TorchServe predict (JSON base64)", served["predict_json"]))
        if "explain" in served:
            rows.append(("TorchServe explain (PNG bytes)", served["explain"]))
    for name, run in results.get("litserve", {}).items():
        rows.append((f"LitServe {name} (JSON base64)", run["predict"]))
    for name, run in results.get("variants", {}).items():
        rows.append((f"variant {name}", run["predict"]))
    if rows:
        lines += ["Served (wrk, 1 thread pinned to one core, loopback)", ""]
        lines += [
            "| server | conc. | req/s | p50 ms | p95 ms | p99 ms | errors "
            "| CPU ms/req frontend + workers |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, points in rows:
            for point, stats in points.items():
                errors = stats["non_2xx"] + stats["socket_errors"]
                cpu = stats.get("cpu_ms_per_request")
                cpu_text = f"{cpu['frontend']:.2f} + {cpu['workers']:.2f}" if cpu else ""
                lines.append(
                    f"| {label} | {point[1:]} | {stats['requests_per_s']:.1f} | "
                    f"{stats['p50_ms']:.2f} | {stats['p95_ms']:.2f} | {stats['p99_ms']:.2f} | "
                    f"{errors} | {cpu_text} |"
                )
        lines.append("")
    if results.get("targets"):
        lines += ["Targets", "", "| target | value | met |", "|---|---|---|"]
        for check in results["targets"]:
            lines.append(
                f"| {check['target']} | {check['value']} | {'yes' if check['met'] else 'NO'} |"
            )
    return "\n".join(lines)


# --- profile --------------------------------------------------------------------------------
def profile(args, batch_size: int) -> None:
    """cProfile of FashionHandler.handle (the worker's path, without the socket) and
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
        print(f"=== cProfile: FashionHandler.handle + json.dumps, batch {size}, {calls} calls ===")
        print(stream.getvalue())

    handler = pipeline.handler
    pixels, _ = prepare(handler, image_bytes)
    batch = to_batch_tensor(
        [pixels] * batch_size, handler.contract.mean, handler.contract.std, handler.device
    )
    with torch.profiler.profile() as prof:
        for _ in range(50):
            handler.inference(batch)
    print(f"=== torch.profiler: FashionHandler.inference, batch {batch_size}, 50 calls ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


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
    parser.add_argument(
        "--image",
        type=Path,
        default=DEFAULT_IMAGE,
        help="the PNG every request sends (default samples/ankle_boot.png)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
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
        help="override a model-config.yaml key for the main TorchServe run "
        "(handler.<key> for the handler section; env.<NAME> for serve.sh)",
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
        choices=["in-process", "torchserve", "litserve"],
        help="parts to leave out",
    )
    parser.add_argument(
        "--no-json-body",
        action="store_true",
        help="skip TorchServe with LitServe's JSON base64 body",
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
    results: dict = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "explain_duration_s": args.explain_duration,
        "image": str(args.image),
        "served_batch_size": batch_size,
    }
    if "in-process" not in args.skip:
        print(f"In-process ({args.device}), {args.in_process_s} s per figure...", flush=True)
        results["in_process"] = in_process(args, batch_size)
    if args.device == "cpu":
        if "torchserve" not in args.skip:
            overrides, env = parse_overrides(args.set)
            results["torchserve"] = torchserve_run(args, "main", overrides, env, json_body, True)
        for spec in args.variant:
            name, _, items = spec.partition(":")
            overrides, env = parse_overrides([i for i in items.split(",") if i])
            variant = torchserve_run(args, name, overrides, env, json_body, False)
            results.setdefault("variants", {})[name] = variant
        if "litserve" not in args.skip:
            results["litserve"] = litserve_runs(args, json_body)
    results["targets"] = check_targets(results)
    results["load_average_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

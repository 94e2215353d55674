"""Load generation for the benchmark: wrk pinned to one core, and the warm-up that waits for
TorchServe's JIT compiler to settle before a series is recorded.

wrk runs benchmarks/wrk_post.lua, which POSTs one body file and prints its figures as one
JSON line (requests/s, p50/p95/p99 latency in ms, status counts, socket errors).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import http_call

WRK_LUA = Path(__file__).with_name("wrk_post.lua")
CONCURRENCIES = (1, 8, 32)  # connections per load point, unless a command is told others
WRK_JSON_PREFIX = "WRK_JSON "
# Warm-up ends once the JVM's JIT compiler threads use at most this share of its CPU.
JIT_SETTLED_SHARE = 0.02


@dataclass(frozen=True)
class LoadSettings:
    """How every load point is generated: warm-up windows, and wrk's core and timeout."""

    warmup_s: float = 5  # one window of unrecorded load before a series
    warmup_max_s: float = 60  # windows repeat until the JIT settles, at most this long
    wrk_cpu: str = "1"  # the core wrk is pinned to ("none": not pinned)
    wrk_timeout_s: float = 30


def wrk(
    url: str,
    body_file: Path,
    token: str = "",
    content_type: str = "application/octet-stream",
    connections: int = 1,
    duration_s: float = 10,
    timeout_s: float = 30,
    cpu: str = "1",
    headers: Mapping[str, str] | None = None,
) -> dict:
    """Load `url` with wrk (one thread, pinned to `cpu`) POSTing `body_file`, with `headers`
    besides the token's and the content type.

    Returns requests/s, p50/p95/p99 latency (ms), status-code counts and errors.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install wrk (scripts/test-tools.sh)")
    seconds = max(1, round(duration_s))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={round(timeout_s)}s"]
    command += ["-s", str(WRK_LUA), url, "--", str(body_file), token, content_type]
    command += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if cpu and shutil.which("taskset") and cpu != "none":
        command = ["taskset", "-c", cpu, *command]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    for line in result.stdout.splitlines():
        if line.startswith(WRK_JSON_PREFIX):
            stats = json.loads(line[len(WRK_JSON_PREFIX) :])
            stats["connections"] = connections
            return stats
    raise RuntimeError(f"wrk gave no result ({result.returncode}): {result.stderr[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat)."""
    return sum(user_and_system_s(pid))


def user_and_system_s(pid: int) -> tuple[float, float]:
    """CPU seconds a process has spent in user space and in the kernel so far."""
    return _user_and_system_from_stat(Path(f"/proc/{pid}/stat").read_text())


def _user_and_system_from_stat(stat: str) -> tuple[float, float]:
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _threads_cpu(pid: int) -> dict[str, tuple[bool, float]]:
    """{thread id: (is a JIT compiler thread, CPU seconds)} for the live threads of `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        threads[task.name] = ("CompilerThre" in name, sum(_user_and_system_from_stat(stat)))
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


def warm_up(
    url,
    body_file,
    token,
    content_type,
    connections,
    settings: LoadSettings,
    jvm_pid=None,
    headers: Mapping[str, str] | None = None,
) -> list:
    """Unrecorded load before a series: one window at c1, then windows at `connections`.

    TorchServe's frontend is a JVM, and its JIT compiler keeps compiling the request path for
    tens of seconds of load at these rates, while throughput stays below its settled rate
    (docs/performance.md). So with `jvm_pid` a window repeats until the compiler threads used
    at most JIT_SETTLED_SHARE of the JVM's CPU in it (or under two clock ticks, when the JVM
    had little to do), for at most settings.warmup_max_s: the figures then describe a server
    that has been up for a while, as users' servers are.
    """
    window_s = max(1, round(settings.warmup_s))  # wrk runs whole seconds
    # c1 first: TorchScript specializes on each batch shape it meets.
    wrk(url, body_file, token, content_type, 1, window_s, cpu=settings.wrk_cpu, headers=headers)
    windows, started = [], time.perf_counter()
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    while True:
        since = jit_cpu(jvm_pid) if jvm_pid else None
        point = wrk(
            url, body_file, token, content_type, connections, window_s, cpu=settings.wrk_cpu,
            headers=headers,
        )  # fmt: skip
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
        if settled or time.perf_counter() - started + window_s > settings.warmup_max_s:
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
    url,
    body_file,
    token,
    content_type,
    concurrencies,
    duration_s,
    settings: LoadSettings,
    processes=None,
    headers: Mapping[str, str] | None = None,
) -> tuple[dict, list]:
    """One wrk run per concurrency, after warm_up; (points, warm-up windows).
    `processes` ({role: [pid, ...]}): also the CPU time each role spent per request during
    the run: TorchServe's Java "frontend" (warm_up waits for its JIT) and its "workers"."""
    jvm_pid = (processes or {}).get("frontend", [None])[0]
    warmup = warm_up(
        url, body_file, token, content_type, max(concurrencies), settings, jvm_pid, headers
    )
    settle(url, body_file, token, content_type, headers)
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
            timeout_s=settings.wrk_timeout_s,
            cpu=settings.wrk_cpu,
            headers=headers,
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
        settle(url, body_file, token, content_type, headers)
    return points, warmup


def settle(url: str, body_file: Path, token: str, content_type: str, extra_headers=None) -> None:
    """Wait until the requests wrk left queued at its deadline are served: one request
    queued behind them comes back (both servers answer in arrival order per worker)."""
    headers = {"Content-Type": content_type, **(extra_headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http_call("POST", url, body_file.read_bytes(), headers, timeout=120)


def summary(point: dict) -> str:
    errors = point["non_2xx"] + point["socket_errors"]
    return (
        f"{point['requests_per_s']:.0f} req/s, p50 {point['p50_ms']:.1f} ms, "
        f"p99 {point['p99_ms']:.1f} ms, errors {errors}"
    )

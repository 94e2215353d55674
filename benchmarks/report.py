"""The benchmark's verdicts and tables: targets checked against one run's figures, and the
tables printed at the end of a run or written as Markdown (`--markdown FILE`) for
docs/performance.md, from the JSON the run wrote (`python -m benchmarks.report bench.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Targets on the 2-core reference machine (docs/performance.md says why these).
CEILING_FRACTION_TARGET = 0.80
P50_C1_EXTRA_MS_TARGET = 2.5
EXPLAIN_FRACTION_TARGET = 0.90
KSERVE_PEER_FACTOR_TARGET = 2.0  # the kserve runtime's requests/s at the highest concurrency


def check_targets(results: dict) -> list[dict]:
    """Each target's verdict from the run's own figures (none where a part is missing)."""
    return torchserve_targets(results) + kserve_targets(results)


def torchserve_targets(results: dict) -> list[dict]:
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
        peers = [
            run["predict"][point]["requests_per_s"]
            for run in results.get("litserve", {}).values()
            if point in run["predict"]
        ]
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
        # Against the explanation ceiling: the same processes and batch as the served ones.
        ig = local["explain_ceiling"]["images_per_s"]
        explained = served["explain"][last]["requests_per_s"]
        checks.append(
            {
                "target": f"served explanations at {last} >= {EXPLAIN_FRACTION_TARGET:.0%} "
                "of the in-process explanation ceiling",
                "value": f"{explained:.1f} / {ig:.1f} = {explained / ig:.0%}",
                "met": explained >= EXPLAIN_FRACTION_TARGET * ig,
            }
        )
    return checks


def best_litserve(results: dict, point: str, key: str, best=max) -> float | None:
    """LitServe's best figure at `point` over its configurations (None if none ran it)."""
    figures = [
        run["predict"][point][key]
        for run in results.get("litserve", {}).values()
        if point in run["predict"]
    ]
    return best(figures) if figures else None


def kserve_targets(results: dict) -> list[dict]:
    """The kserve runtime against LitServe's best and TorchServe, in the same run: p50 at the
    lowest concurrency, requests/s at the highest, explanations at both."""
    kserve = results.get("kserve")
    if not kserve or "predict" not in kserve:
        return []
    torchserve = results.get("torchserve", {})
    first = f"c{min(results['concurrency'])}"
    last = f"c{max(results['concurrency'])}"
    checks = []
    p50 = kserve["predict"][first]["p50_ms"]
    peer_p50 = best_litserve(results, first, "p50_ms", best=min)
    ts_p50 = torchserve.get("predict", {}).get(first, {}).get("p50_ms")
    if peer_p50 is not None and ts_p50 is not None:
        checks.append(
            {
                "target": f"KServe runtime at {first}: p50 below LitServe's best and below "
                "TorchServe's",
                "value": f"{p50:.2f} ms vs LitServe {peer_p50:.2f} ms, TorchServe {ts_p50:.2f} ms",
                "met": p50 < peer_p50 and p50 < ts_p50,
            }
        )
    rps = kserve["predict"][last]["requests_per_s"]
    peer_rps = best_litserve(results, last, "requests_per_s")
    if peer_rps is not None:
        ts_rps = torchserve.get("predict", {}).get(last, {}).get("requests_per_s")
        gap = f"; TorchServe {ts_rps:.0f} ({rps / ts_rps:.2f}x)" if ts_rps else ""
        checks.append(
            {
                "target": f"KServe runtime at {last}: at least {KSERVE_PEER_FACTOR_TARGET:g}x "
                "LitServe's best",
                "value": f"{rps:.0f} vs {peer_rps:.0f} req/s = {rps / peer_rps:.2f}x{gap}",
                "met": rps >= KSERVE_PEER_FACTOR_TARGET * peer_rps,
            }
        )
    ours, theirs = kserve.get("explain", {}), torchserve.get("explain", {})
    points = [point for point in dict.fromkeys((first, last)) if point in ours and point in theirs]
    if points:
        checks.append(
            {
                "target": "Explanations: no fewer per second than TorchServe's at "
                + " and ".join(points),
                "value": ", ".join(
                    f"{point} {ours[point]['requests_per_s']:.1f} vs "
                    f"{theirs[point]['requests_per_s']:.1f}/s"
                    for point in points
                ),
                "met": all(
                    ours[p]["requests_per_s"] >= theirs[p]["requests_per_s"] for p in points
                ),
            }
        )
    return checks


def table(results: dict) -> str:
    lines = []
    local = results.get("in_process")
    if local:
        lines += ["In-process (one process, one torch thread, the handler's functions)", ""]
        lines += ["| what | images/s | ms per call (p50) |", "|---|---:|---:|"]
        for key, label in (
            ("batch_1", "predict, batch 1"),
            ("explain_batch_1", "explain (IG), batch 1, on the path threads"),
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
        for key, what in (("ceiling", "ceiling"), ("explain_ceiling", "explanation ceiling")):
            ceiling = local[key]
            lines.append(
                f"| {what}: {ceiling['processes']} processes x batch {ceiling['batch_size']}, "
                f"summed | {ceiling['images_per_s']:.1f} | |"
            )
        lines.append("")
    rows = []
    if "torchserve" in results:
        served = results["torchserve"]
        rows.append(("TorchServe predict (PNG bytes)", served["predict"]))
        if "predict_json" in served:
            rows.append(("TorchServe predict (JSON base64)", served["predict_json"]))
        if "predict_v2" in served:
            rows.append(("TorchServe predict (v2 JSON base64)", served["predict_v2"]))
        if "explain" in served:
            rows.append(("TorchServe explain (PNG bytes)", served["explain"]))
    if "kserve" in results:
        served = results["kserve"]
        for key, label in (
            ("predict", "predict (PNG bytes)"),
            ("predict_json", "predict (JSON base64)"),
            ("predict_v2", "predict (v2 JSON base64)"),
            ("explain", "explain (PNG bytes)"),
            ("grpc", "gRPC ModelInfer (Python tritonclient)"),
        ):
            if key in served:
                rows.append((f"KServe runtime {label}", served[key]))
    for name, run in results.get("litserve", {}).items():
        rows.append((f"LitServe {name} (JSON base64)", run["predict"]))
    for name, run in results.get("variants", {}).items():
        rows.append((f"variant {name}", run["predict"]))
        if "explain" in run:
            rows.append((f"variant {name} explain", run["explain"]))
    if rows:
        lines += ["Served (wrk, 1 thread pinned to one core, loopback)", ""]
        lines += [
            "| server | conc. | req/s | p50 ms | p95 ms | p99 ms | errors "
            "| CPU ms/req frontend + workers |"
        ]
        # (the kserve runtime's "frontend" is its supervisor: the workers share its socket)
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, points in rows:
            for point, stats in points.items():
                errors = stats["non_2xx"] + stats["socket_errors"]  # gRPC: failed calls
                cpu = stats.get("cpu_ms_per_request")
                front = cpu and cpu.get("frontend", cpu.get("supervisor"))
                cpu_text = f"{front:.2f} + {cpu['workers']:.2f}" if cpu else ""
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


def machine_line(results: dict) -> str:
    """Where and how a run was made, for the top of its Markdown."""
    machine = results.get("machine", {})
    return (
        f"{machine.get('cpus', '?')} cores ({machine.get('cpu_model', 'unknown CPU')}), "
        f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}; "
        f"load average {format_load(machine.get('load_average_at_start'))} at the start, "
        f"{format_load(results.get('load_average_at_end'))} at the end"
    )


def format_load(load) -> str:
    return " / ".join(f"{value:.2f}" for value in load) if load else "?"


def markdown(results: dict) -> str:
    """The run as Markdown: the command and machine, then its tables."""
    command = results.get("command", "python -m benchmarks.bench")
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Machine: {machine_line(results)}.",
            "",
            table(results),
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render a benchmark JSON as Markdown.")
    parser.add_argument("results", type=Path, help="bench.json written by benchmarks.bench")
    parser.add_argument("--markdown", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = markdown(json.loads(args.results.read_text()))
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

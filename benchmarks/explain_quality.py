"""How faithful and how fast each explanation setting is, in one run on one machine.

    python -m benchmarks.explain_quality                          # samples + 256 test images
    python -m benchmarks.explain_quality --images 32 --reference-steps 100   # quicker
    python -m benchmarks.explain_quality --served --markdown FILE   # + served req/s (~6 min more)

Faithfulness, for integrated gradients: |convergence delta| (how far the attributions' sum
is from f(input) - f(black)) and the relative L2 distance of the attribution map from a
high-step reference (Gauss-Legendre, --reference-steps), median, 95th and 99th percentile
over the samples and the first --images test images, each explained for its predicted class;
with steps "auto" at each --tolerances, also the steps each image took and the share that
reached max_ig_steps without meeting the tolerance.
Speed: ms of CPU per explained image (one process, one torch thread), at batch 1 and at
the served batch size (median of repeated batches), and the mean over every image explained
in batches of 8, for
- "before": Captum's IntegratedGradients on the exported TorchScript as loaded, contiguous
  layout (how the handler explained before its gradient copy);
- "via Captum": Captum on the handler's gradient copy (how it explained before fashion_serve.ig),
  also the reference's method;
- "in fp32": fashion_serve.ig's chain with fp32 gradients (the handler's on CPUs without bf16);
- the handler's own `attribute` as configured, for each method and step count.
With --served, also explanations/s served by TorchServe (the repository's archive, config
and model-config.yaml) for each of the handler's settings, chosen per request with the
X-Method and X-Steps headers: wrk POSTs --image at each --concurrency, as benchmarks.bench
loads it; and predictions of the same image by the same server, which the table's last line
compares the cheap method (saliency) and the default integrated gradients over.
--markdown FILE writes the table for docs/performance.md.
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

from benchmarks.cli import command_line, temp_dir
from benchmarks.load import CONCURRENCIES, LoadSettings, load_points
from fashion_serve.explain import attribute
from fashion_serve.ig import ReluChain
from fashion_serve.image import prepare_image, to_batch_tensor
from fashion_serve.options import AUTO_STEPS, INTEGRATED_GRADIENTS, METHODS
from tests.support.handler_context import initialized_handler
from tests.support.servers import REPO_ROOT, TorchServe, model_config
from training import data

DEFAULT_OUT = REPO_ROOT / "artifacts" / "bench" / "explain_quality.json"
IG_STEPS = (16, 24, 32, 50)


def before(model, inputs, baseline, targets, steps):
    """Integrated gradients as the handler ran it before: the loaded model, NCHW."""
    baselines = baseline.unsqueeze(0).expand_as(inputs).contiguous()
    with torch.enable_grad():
        attributions, deltas = IntegratedGradients(model).attribute(
            inputs, baselines=baselines, target=targets, n_steps=steps,
            return_convergence_delta=True,
        )  # fmt: skip
    return attributions.detach(), deltas.detach()


def test_inputs(handler, count: int) -> torch.Tensor:
    """The samples and the first `count` test images, normalized: (N, 1, 28, 28)."""
    pixels = [
        prepare_image(path.read_bytes(), handler.service.input_size, "auto", 10**8)
        for path in sorted((REPO_ROOT / "samples").glob("*.png"))
    ]
    if count:
        pixels += [image.numpy() for image in data.load("test").images[:count]]
    return to_batch_tensor(
        pixels, handler.service.contract.mean, handler.service.contract.std, handler.service.device
    )


def faithfulness(attributions, deltas, steps, reference, tolerance=None) -> dict:
    distance = (attributions - reference).flatten(1).norm(dim=1)
    relative = (distance / reference.flatten(1).norm(dim=1).clamp_min(1e-12)).tolist()
    result = {
        "relative_l2_median": quantile(relative, 0.5),
        "relative_l2_p95": quantile(relative, 0.95),
    }
    if deltas is not None:
        magnitudes = deltas.abs().tolist()
        result |= {
            "delta_median": quantile(magnitudes, 0.5),
            "delta_p95": quantile(magnitudes, 0.95),
            "delta_p99": quantile(magnitudes, 0.99),
        }
    if steps is not None:
        counts = steps.float().tolist()
        histogram = collections.Counter(map(int, counts))
        result |= {
            "steps_mean": round(sum(counts) / len(counts), 1),
            "steps_median": quantile(counts, 0.5),
            "steps_p95": quantile(counts, 0.95),
            "steps_histogram": dict(sorted(histogram.items())),
        }
    if tolerance is not None:
        result["unconverged"] = sum(m > tolerance for m in deltas.abs().tolist())
    return result


def quantile(values: list[float], q: float) -> float:
    return round(float(torch.quantile(torch.tensor(values), q)), 5)


def ms_per_image(explain: Callable, examples: tuple, batch_size: int, seconds: float) -> float:
    """Median ms per image over repeated batches of `batch_size` (after one warm-up).
    `examples`: (inputs, targets, logits), sliced alike for each call of explain()."""
    explain(*(part[:batch_size] for part in examples))
    times, start, deadline = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        batch = slice(start, start + batch_size)
        started = time.perf_counter()
        explain(*(part[batch] for part in examples))
        times.append((time.perf_counter() - started) / batch_size * 1000)
        start = (start + batch_size) % (len(examples[0]) - batch_size)
    return round(statistics.median(times), 2)


def chunked(explain: Callable, examples: tuple, size: int = 8):
    """explain() over the (inputs, targets, logits) in chunks: (attributions, deltas or None,
    steps or None, mean ms of CPU per image)."""
    started = time.process_time()
    parts = [
        explain(*(part[i : i + size] for part in examples))
        for i in range(0, len(examples[0]), size)
    ]
    cpu_ms = (time.process_time() - started) * 1000 / len(examples[0])

    def joined(index: int):
        return None if parts[0][index] is None else torch.cat([p[index] for p in parts])

    return joined(0), joined(1), joined(2), round(cpu_ms, 2)


def run(args) -> dict:
    handler, _ = initialized_handler(args.export_dir)
    inputs = test_inputs(handler, args.images)
    # As in the handler: the prediction picks each image's target, and integrated gradients
    # take f(input) from its logits.
    logits = handler.service.logits(inputs)
    examples = (inputs, logits.argmax(dim=1).tolist(), logits)
    baseline = handler.service.baseline
    served_batch = int(model_config().get("batchSize", 1))
    print(f"{len(inputs)} images; reference: {args.reference_steps} steps...", flush=True)

    def handler_method(
        method: str, steps, chain=handler.service.relu_chain, tolerance: float = 0.0
    ) -> Callable:
        return lambda x, t, s: attribute(
            method, handler.service.gradient_model, handler.service.predict_model, x, baseline,
            t, steps, chain, s, None, tolerance, handler.service.limits.max_steps,
        )  # fmt: skip

    # The reference: Captum on the gradient copy in fp32, independent of fashion_serve.ig.
    reference = chunked(handler_method(INTEGRATED_GRADIENTS, args.reference_steps, None),
                        examples, size=2)[0]  # fmt: skip
    default = handler.service.limits.default_steps
    fp32_chain = ReluChain.from_model(
        handler.service.model, handler.service.contract.input_shape, handler.service.device
    )
    # name: (explain function, the request headers that choose it from a served handler;
    # None: not the handler's, measured in-process only)
    settings = {
        f"before: integrated_gradients, {default} steps": (
            lambda x, t, _: (*before(handler.service.model, x, baseline, t, default), None),
            None,
        ),
        f"integrated_gradients via Captum, {default} steps": (
            handler_method(INTEGRATED_GRADIENTS, default, None),
            None,
        ),
        f"integrated_gradients in fp32, {default} steps": (
            handler_method(INTEGRATED_GRADIENTS, default, fp32_chain),
            None,
        ),
    }
    for steps in sorted({*IG_STEPS, default}):  # the default's row is the no-heatmap one's
        settings[f"integrated_gradients, {steps} steps"] = (
            handler_method(INTEGRATED_GRADIENTS, steps),
            {"X-Method": INTEGRATED_GRADIENTS, "X-Steps": str(steps)},
        )
    tolerances = {}
    for tolerance in args.tolerances:
        name = f"integrated_gradients, auto, tolerance {tolerance:g}"
        tolerances[name] = tolerance
        settings[name] = (
            handler_method(INTEGRATED_GRADIENTS, AUTO_STEPS, tolerance=tolerance),
            {"X-Method": INTEGRATED_GRADIENTS, "X-Steps": AUTO_STEPS,
             "X-Delta-Tolerance": str(tolerance)},
        )  # fmt: skip
    for method in METHODS[1:]:
        settings[method] = handler_method(method, 0), {"X-Method": method}
    rows = {}
    for name, (explain, _) in settings.items():
        attributions, deltas, steps, cpu_ms = chunked(explain, examples)
        row = faithfulness(attributions, deltas, steps, reference, tolerances.get(name))
        row["cpu_ms_per_image_mean"] = cpu_ms
        for batch_size in (1, served_batch):
            row[f"ms_per_image_batch_{batch_size}"] = ms_per_image(
                explain, examples, batch_size, args.seconds
            )
        rows[name] = row
        print(f"  {name}: {row}", flush=True)
    headers_by_name = {name: headers for name, (_, headers) in settings.items()}
    # Served without the picture (heatmap=false): the same attributions as the row named,
    # so its in-process figures, measured once.
    for source in (f"integrated_gradients, {default} steps", "saliency"):
        name = f"{source}, no heatmap"
        rows[name] = dict(rows[source])
        headers_by_name[name] = {**headers_by_name[source], "X-Heatmap": "false"}
    results = dict(
        images=len(inputs), reference_steps=args.reference_steps, default_steps=default,
        served_batch_size=served_batch, rows=rows,
    )  # fmt: skip
    if args.served:
        rates, results["served_predictions_per_s"] = served_rates(args, headers_by_name)
        for name, rate in rates.items():
            rows[name]["served_requests_per_s"] = rate
    return results


def served_rates(args, headers_by_name: dict) -> tuple[dict, dict]:
    """({name: {"c1": req/s, ...}}, {"c1": predictions/s, ...}): explanations served by
    TorchServe for each setting that has request headers (the others are not the handler's),
    and predictions of the same image by the same server, which they are compared over."""
    rates = {}
    settings = LoadSettings(args.warmup_s, args.warmup_max_s)  # as benchmarks.bench warms up
    with TorchServe(temp_dir("explain-quality-") / "run", args.export_dir) as server:
        processes = {"frontend": [server.frontend_pid()], "workers": server.ready_worker_pids()}

        def served(url: str, name: str, headers: dict) -> dict:
            print(f"  served {name}:", flush=True)
            points, _ = load_points(
                url, args.image, server.inference_token, "application/octet-stream",
                args.concurrency, args.served_seconds, settings, processes, headers,
            )  # fmt: skip
            bad = {point: stats["non_2xx"] for point, stats in points.items() if stats["non_2xx"]}
            if bad:
                raise RuntimeError(f"{name}: non-2xx answers at {bad}")
            return {point: stats["requests_per_s"] for point, stats in points.items()}

        predictions = served(server.predictions_url, "predictions", {})
        for name, headers in headers_by_name.items():
            if headers is not None:
                rates[name] = served(server.explanations_url, name, headers)
    return rates, predictions


def cost_over_prediction(results: dict, name: str, point: str = "c1") -> float:
    """Milliseconds a served explanation of setting `name` takes beyond a served prediction,
    one request at a time (`point` c1), from the rates of one run."""
    explained = results["rows"][name]["served_requests_per_s"][point]
    return 1000 / explained - 1000 / results["served_predictions_per_s"][point]


def markdown(results: dict) -> str:
    batch = results["served_batch_size"]
    points = next(
        (list(row["served_requests_per_s"]) for row in results["rows"].values()
         if "served_requests_per_s" in row), [],
    )  # fmt: skip
    served_header = "".join(f" served/s {point} |" for point in points)
    lines = [
        f"| setting | ms/image, batch 1 | ms/image, batch {batch} | ms/image, mean |"
        f"{served_header} \\|delta\\| median / p95 / p99 | steps: mean, p95 (not met) "
        f"| distance from {results['reference_steps']} steps, median / p95 |",
        "|---|---:|---:|---:|" + "---:|" * len(points) + "---:|---:|---:|",
    ]
    for name, row in results["rows"].items():
        delta, distance = "", ""  # the other methods measure something else than IG's reference
        if "delta_median" in row:
            delta = f"{row['delta_median']:.4f} / {row['delta_p95']:.4f} / {row['delta_p99']:.4f}"
            distance = f"{row['relative_l2_median']:.3f} / {row['relative_l2_p95']:.3f}"
        steps = ""
        if "steps_mean" in row:
            steps = f"{row['steps_mean']:.1f}, {row['steps_p95']:.0f}"
            steps += f" ({row['unconverged']})" if "unconverged" in row else ""
        batch_1, batched = row["ms_per_image_batch_1"], row[f"ms_per_image_batch_{batch}"]
        mean = row["cpu_ms_per_image_mean"]
        rates = row.get("served_requests_per_s", {})
        served = "".join(f" {rates[point]:.1f} |" if point in rates else " |" for point in points)
        lines.append(
            f"| {name} | {batch_1:.1f} | {batched:.1f} | {mean:.1f} |{served} {delta} | {steps} "
            f"| {distance} |"
        )
    predictions = results.get("served_predictions_per_s")
    if predictions and "c1" in predictions:
        cheap, default = "saliency", f"integrated_gradients, {results['default_steps']} steps"
        cheap_ms, default_ms = (cost_over_prediction(results, n) for n in (cheap, default))
        rates = ", ".join(f"{point} {rate:.1f}" for point, rate in predictions.items())
        lines += [
            "",
            f"Served predictions/s of the same image by the same server: {rates}. Over a "
            f"prediction at c1, {cheap} with its heatmap costs {cheap_ms:.1f} ms and {default} "
            f"{default_ms:.1f} ms: a ratio of {cheap_ms / default_ms:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--images", type=int, default=256, help="test images besides the samples")
    parser.add_argument("--reference-steps", type=int, default=400)
    parser.add_argument(
        "--tolerances", type=float, nargs="*", default=[0.1, 0.15, 0.2],
        help='delta tolerances of the steps "auto" rows (default 0.1 0.15 0.2)',
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=3, help="timing per setting and batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--served", action="store_true", help="also explanations/s served")
    parser.add_argument("--served-seconds", type=float, default=10, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument("--warmup-s", type=float, default=5, help="unrecorded load per setting")
    parser.add_argument(
        "--warmup-max-s", type=float, default=60, help="the first until the JIT settles"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    table = markdown(results)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

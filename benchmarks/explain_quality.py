"""How faithful and how fast each explanation setting is, in one run on one machine.

    python -m benchmarks.explain_quality                          # samples + 256 test images
    python -m benchmarks.explain_quality --images 32 --reference-steps 100   # quicker

Faithfulness, for integrated gradients: |convergence delta| (how far the attributions' sum
is from f(input) - f(black)) and the relative L2 distance of the attribution map from a
high-step reference (Gauss-Legendre, --reference-steps), median and 95th percentile over
the samples and the first --images test images, each explained for its predicted class.
Speed: ms of CPU per explained image (one process, one torch thread), at batch 1 and at
the served batch size, for
- "before": Captum's IntegratedGradients on the exported TorchScript as loaded, contiguous
  layout (how the handler explained before its gradient copy);
- the handler's own `attribute` with its gradient copy, for each method and step count.
--markdown FILE writes the table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

from benchmarks.inprocess import initialized_handler
from benchmarks.servers import DEFAULT_EXPORT_DIR, REPO_ROOT, model_config
from fashion_explain import INTEGRATED_GRADIENTS, METHODS, attribute
from fashion_image import prepare_image, to_batch_tensor
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
        prepare_image(path.read_bytes(), handler.input_size, "auto", 10**8)
        for path in sorted((REPO_ROOT / "samples").glob("*.png"))
    ]
    pixels += [image.numpy() for image in data.load("test").images[:count]]
    return to_batch_tensor(pixels, handler.contract.mean, handler.contract.std, handler.device)


def faithfulness(attributions, deltas, reference) -> dict:
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
        }
    return result


def quantile(values: list[float], q: float) -> float:
    return round(float(torch.quantile(torch.tensor(values), q)), 5)


def ms_per_image(explain: Callable, inputs, targets, batch_size: int, seconds: float) -> float:
    """Median ms per image over repeated batches of `batch_size` (after one warm-up)."""
    explain(inputs[:batch_size], targets[:batch_size])
    times, start, deadline = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        batch = slice(start, start + batch_size)
        started = time.perf_counter()
        explain(inputs[batch], targets[batch])
        times.append((time.perf_counter() - started) / batch_size * 1000)
        start = (start + batch_size) % (len(inputs) - batch_size)
    return round(statistics.median(times), 2)


def chunked(explain: Callable, inputs, targets, size: int = 8):
    """explain() over the inputs in chunks: (attributions, deltas or None)."""
    parts = [
        explain(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(inputs), size)
    ]
    deltas = None if parts[0][1] is None else torch.cat([d for _, d in parts])
    return torch.cat([a for a, _ in parts]), deltas


def run(args) -> dict:
    handler, _ = initialized_handler(args.export_dir)
    inputs = test_inputs(handler, args.images)
    with torch.inference_mode():
        targets = handler.predict_model(inputs).argmax(dim=1).tolist()
    baseline = handler.baseline
    served_batch = int(model_config().get("batchSize", 1))
    print(f"{len(inputs)} images; reference: {args.reference_steps} steps...", flush=True)

    def handler_method(method: str, steps: int) -> Callable:
        return lambda x, t: attribute(
            method, handler.gradient_model, handler.predict_model, x, baseline, t, steps
        )

    reference, _ = chunked(handler_method(INTEGRATED_GRADIENTS, args.reference_steps), inputs,
                           targets, size=2)  # fmt: skip
    settings = {f"before: integrated_gradients, {handler.limits.default_steps} steps": (
        lambda x, t: before(handler.model, x, baseline, t, handler.limits.default_steps)
    )}  # fmt: skip
    for steps in IG_STEPS:
        settings[f"integrated_gradients, {steps} steps"] = handler_method(
            INTEGRATED_GRADIENTS, steps
        )
    for method in METHODS[1:]:
        settings[method] = handler_method(method, 0)
    rows = {}
    for name, explain in settings.items():
        attributions, deltas = chunked(explain, inputs, targets)
        row = faithfulness(attributions, deltas, reference)
        for batch_size in (1, served_batch):
            row[f"ms_per_image_batch_{batch_size}"] = ms_per_image(
                explain, inputs, targets, batch_size, args.seconds
            )
        rows[name] = row
        print(f"  {name}: {row}", flush=True)
    return {"images": len(inputs), "reference_steps": args.reference_steps,
            "served_batch_size": served_batch, "rows": rows}  # fmt: skip


def markdown(results: dict) -> str:
    batch = results["served_batch_size"]
    lines = [
        f"| setting | ms/image, batch 1 | ms/image, batch {batch} | \\|delta\\| median / p95 "
        f"| distance from {results['reference_steps']} steps, median / p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["rows"].items():
        delta, distance = "", ""  # the other methods measure something else than IG's reference
        if "delta_median" in row:
            delta = f"{row['delta_median']:.4f} / {row['delta_p95']:.4f}"
            distance = f"{row['relative_l2_median']:.3f} / {row['relative_l2_p95']:.3f}"
        batch_1, served = row["ms_per_image_batch_1"], row[f"ms_per_image_batch_{batch}"]
        lines.append(f"| {name} | {batch_1:.1f} | {served:.1f} | {delta} | {distance} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORT_DIR)
    parser.add_argument("--images", type=int, default=256, help="test images besides the samples")
    parser.add_argument("--reference-steps", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=3, help="timing per setting and batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--markdown", type=Path, default=None)
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

"""Whether a device answers as the CPU does: the tolerances, the comparison of one answer,
and TF32 switched on or off (the GPU tests and `python -m benchmarks.gpu_proof`)."""

from __future__ import annotations

import base64
import dataclasses
from contextlib import contextmanager

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """How far a device's answer may be from the CPU's and still count as equal.

    Probabilities: absolute. Attributions: |device - cpu| <= rtol * |cpu| + scaled_atol *
    max|cpu| per image; the floor is relative to the image's largest attribution because a
    near-zero pixel's relative difference means nothing.
    """

    probability_abs: float
    attribution_rtol: float
    attribution_scaled_atol: float


# Full fp32 on both sides: only the order of floating-point sums differs (~1e-6 relative
# in logits), so 1e-4 on probabilities is a wide margin. Attributions are rounded to 4
# significant digits: two equal values may come back one unit apart in the 4th digit, up
# to 1e-3 relative, hence rtol 2e-3.
FP32 = Tolerances(probability_abs=1e-4, attribution_rtol=2e-3, attribution_scaled_atol=1e-3)
# torch's default on an Ampere-or-later GPU lets cuDNN run fp32 convolutions in TF32 (10-bit
# mantissa, ~5e-4 relative per product), forward and backward. Through three convolutions a
# trained model's logits (|logit| up to ~20) can move by ~1e-2, a probability by at most a
# quarter of that; gradients alike. Estimates: the run reports the measured gaps beside them.
TF32 = Tolerances(probability_abs=5e-3, attribution_rtol=5e-2, attribution_scaled_atol=2e-2)


@contextmanager
def tf32(allowed: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls on or off, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def answer_problems(
    reference: dict, candidate: dict, tolerances: Tolerances, gaps: dict | None = None
) -> list[str]:
    """What differs beyond `tolerances` between the CPU's answer and a device's: a
    prediction ({class: probability}) or an explanation. Records the largest gaps."""
    gaps = {} if gaps is None else gaps
    if "attributions" not in reference:
        top1, top1_cpu = next(iter(candidate)), next(iter(reference))
        problems = [] if top1 == top1_cpu else [f"top-1 {top1!r} != {top1_cpu!r}"]
        if candidate.keys() != reference.keys():
            return [*problems, f"classes {sorted(candidate)} != {sorted(reference)}"]
        probability_gap = max(abs(candidate[k] - reference[k]) for k in reference)
    else:
        keys = ("method", "target", "target_name", "steps")
        problems = [
            f"{k} {candidate[k]!r} != {reference[k]!r}"
            for k in keys
            if candidate[k] != reference[k]
        ]
        probability_gap = abs(candidate["probability"] - reference["probability"])
        ref = np.asarray(reference["attributions"], dtype=np.float64)
        cand = np.asarray(candidate["attributions"], dtype=np.float64)
        if ref.shape != cand.shape:
            return [*problems, f"attributions shape {cand.shape} != {ref.shape}"]
        peak = float(np.abs(ref).max()) or 1.0
        diff = np.abs(cand - ref)
        allowed = tolerances.attribution_rtol * np.abs(ref)
        if over := int((diff > allowed + tolerances.attribution_scaled_atol * peak).sum()):
            problems.append(f"{over} attributions outside tolerance")
        scaled = float(diff.max()) / peak
        gaps["attribution_scaled"] = max(gaps.get("attribution_scaled", 0.0), scaled)
        if not base64.b64decode(candidate["heatmap_png"]).startswith(b"\x89PNG\r\n\x1a\n"):
            problems.append("heatmap_png is not a PNG")
    if probability_gap > tolerances.probability_abs:
        problems.append(f"probabilities differ by {probability_gap:.3g}")
    gaps["probability_abs"] = max(gaps.get("probability_abs", 0.0), probability_gap)
    return problems

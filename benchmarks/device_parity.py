"""The handler's answers on one device against the CPU's, request by request.

The same requests (the sample images as predictions and explanations, and bad inputs) go
through TorchServeHandler.handle on both; the comparison asks for the same HTTP statuses, the
same refusal bodies, the same top-1 class and explanation target, and probabilities and
attributions within stated tolerances (`Tolerances`).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tests.support.handler_context import set_requests

EXPLAIN = {"explain": "True"}
MAX_LISTED_FAILURES = 10


@dataclass(frozen=True)
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
# in logits), so 1e-4 on probabilities is a wide margin. The handler rounds attributions to
# 4 significant digits: two equal values may come back one unit apart in the 4th digit, up
# to 1e-3 relative, hence rtol 2e-3.
FP32 = Tolerances(probability_abs=1e-4, attribution_rtol=2e-3, attribution_scaled_atol=1e-3)
# The handler as served on an Ampere-or-later GPU: torch's default lets cuDNN run fp32
# convolutions in TF32 (10-bit mantissa, ~5e-4 relative per product), forward and backward.
# Through three convolutions a trained model's logits (|logit| up to ~20) can move by ~1e-2,
# which moves a probability by at most a quarter of that; gradients move alike. These bounds
# are estimates: the run reports the measured maxima next to them.
TF32 = Tolerances(probability_abs=5e-3, attribution_rtol=5e-2, attribution_scaled_atol=2e-2)


def png_magic(body: bytes) -> bool:
    return body.startswith(b"\x89PNG\r\n\x1a\n")


def bad_requests(good_png: bytes) -> list[tuple[str, dict, dict]]:
    """(name, request, headers) for inputs the handler must refuse, with one good request
    among them: a refusal answers its own request only."""
    json_body = {"data": "not base64 !!"}
    return [
        ("not_an_image", {"body": b"not an image"}, {}),
        ("empty_body", {"body": b""}, {}),
        ("truncated_png", {"body": good_png[: len(good_png) // 3]}, {}),
        ("bad_base64_json", {"body": json_body}, {}),
        ("topk_out_of_range", {"body": good_png}, {"X-Topk": "99"}),
        ("good_among_bad", {"body": good_png}, {}),
        ("unknown_target", {"body": good_png}, {**EXPLAIN, "X-Target": "Hat"}),
        ("steps_out_of_range", {"body": good_png}, {**EXPLAIN, "X-Steps": "100000"}),
    ]


def request_sets(samples: dict[str, bytes]) -> dict[str, list[tuple[str, dict, dict]]]:
    """Named batches of (name, request, headers): each batch is one handle() call."""
    first = next(iter(samples.values()))
    return {
        "predict": [(name, {"body": body}, {}) for name, body in samples.items()],
        "explain": [
            *[(name, {"body": body}, dict(EXPLAIN)) for name, body in samples.items()],
            ("target_bag_16_steps", {"body": first}, {**EXPLAIN, "X-Target": "Bag", "X-Steps": "16"}),  # noqa: E501
        ],
        "refused": bad_requests(first),
    }  # fmt: skip


def answer_batches(handler, context, batches: dict) -> dict[str, list[dict]]:
    """Run each batch through handler.handle: per request its name, status and JSON body."""
    results = {}
    for batch_name, batch in batches.items():
        set_requests(context, [headers for _, _, headers in batch])
        bodies = handler.handle([request for _, request, _ in batch], context)
        results[batch_name] = [
            {
                "name": name,
                "status": context.get_response_status(i)[0],
                # what the worker sends back, so both sides are compared as clients see them
                "body": json.loads(json.dumps(body)),
            }
            for i, ((name, _, _), body) in enumerate(zip(batch, bodies, strict=True))
        ]
    return results


def compare_prediction(reference: dict, candidate: dict, tolerance: float) -> list[str]:
    """Problems with a top-k answer: top-1 must match; probabilities within `tolerance`;
    a class in one top-k and not the other only where it ties the cut-off within it."""
    problems = []
    if next(iter(reference)) != next(iter(candidate)):
        problems.append(f"top-1 {next(iter(candidate))!r} != {next(iter(reference))!r}")
    for name in reference.keys() & candidate.keys():
        if abs(reference[name] - candidate[name]) > tolerance:
            problems.append(f"{name}: {candidate[name]} vs {reference[name]}")
    for answer, other in ((reference, candidate), (candidate, reference)):
        cut_off = min(other.values())
        for name in answer.keys() - other.keys():
            if answer[name] > cut_off + tolerance:
                problems.append(f"{name} ({answer[name]}) is missing from the other top-k")
    return problems


def prediction_gap(reference: dict, candidate: dict) -> float:
    shared = reference.keys() & candidate.keys()
    return max((abs(reference[n] - candidate[n]) for n in shared), default=0.0)


def attribution_figures(reference: dict, candidate: dict) -> dict:
    """Largest difference scaled by the image's largest |attribution|, and cosine similarity."""
    ref = np.asarray(reference["attributions"], dtype=np.float64)
    cand = np.asarray(candidate["attributions"], dtype=np.float64)
    peak = float(np.abs(ref).max()) or 1.0
    norms = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float((ref * cand).sum() / norms) if norms else float(np.array_equal(ref, cand))
    return {"scaled_max_diff": float(np.abs(cand - ref).max()) / peak, "cosine": cosine}


def compare_explanation(reference: dict, candidate: dict, tolerances: Tolerances) -> list[str]:
    problems = [
        f"{key} {candidate.get(key)!r} != {reference.get(key)!r}"
        for key in ("target", "target_name", "steps")
        if candidate.get(key) != reference.get(key)
    ]
    if abs(candidate["probability"] - reference["probability"]) > tolerances.probability_abs:
        problems.append(f"probability {candidate['probability']} vs {reference['probability']}")
    ref = np.asarray(reference["attributions"], dtype=np.float64)
    cand = np.asarray(candidate["attributions"], dtype=np.float64)
    if ref.shape != cand.shape:
        return [*problems, f"attributions shape {cand.shape} != {ref.shape}"]
    allowed = tolerances.attribution_rtol * np.abs(ref)
    allowed += tolerances.attribution_scaled_atol * float(np.abs(ref).max())
    over = int((np.abs(cand - ref) > allowed).sum())
    if over:
        problems.append(f"{over} attributions outside tolerance")
    if not png_magic(base64.b64decode(candidate["heatmap_png"])):
        problems.append("heatmap_png is not a PNG")
    return problems


def compare(reference: dict, candidate: dict, tolerances: Tolerances) -> dict:
    """Both sides' answers to the same batches -> passed, measured maxima, failures."""
    failures: list[str] = []
    gaps = {"probability_abs": 0.0, "attribution_scaled": 0.0, "attribution_min_cosine": 1.0}
    for batch_name, ref_answers in reference.items():
        for ref, cand in zip(ref_answers, candidate[batch_name], strict=True):
            where = f"{batch_name}/{ref['name']}"
            problems = []
            if ref["status"] != cand["status"]:
                problems.append(f"status {cand['status']} != {ref['status']}")
            elif ref["status"] != 200:
                if ref["body"] != cand["body"]:
                    problems.append(f"refusal {cand['body']} != {ref['body']}")
            elif "attributions" in ref["body"]:
                problems += compare_explanation(ref["body"], cand["body"], tolerances)
                figures = attribution_figures(ref["body"], cand["body"])
                gaps["attribution_scaled"] = max(
                    gaps["attribution_scaled"], figures["scaled_max_diff"]
                )
                gaps["attribution_min_cosine"] = min(
                    gaps["attribution_min_cosine"], figures["cosine"]
                )
                gap = abs(ref["body"]["probability"] - cand["body"]["probability"])
                gaps["probability_abs"] = max(gaps["probability_abs"], gap)
            else:
                problems += compare_prediction(
                    ref["body"], cand["body"], tolerances.probability_abs
                )
                gaps["probability_abs"] = max(
                    gaps["probability_abs"], prediction_gap(ref["body"], cand["body"])
                )
            failures += [f"{where}: {problem}" for problem in problems]
    return {
        "passed": not failures,
        "tolerances": asdict(tolerances),
        "measured": {k: float(f"{v:.3g}") if math.isfinite(v) else v for k, v in gaps.items()},
        "failures": failures[:MAX_LISTED_FAILURES],
        "failure_count": len(failures),
    }


def refusals_are_refused(answers: dict) -> list[str]:
    """The bad inputs must be refused (else the status comparison proves nothing), and the
    good request among them answered."""
    problems = []
    for answer in answers["refused"]:
        good = answer["name"] == "good_among_bad"
        if (answer["status"] == 200) != good:
            problems.append(f"refused/{answer['name']}: status {answer['status']}")
    return problems


def load_samples(samples_dir: Path) -> dict[str, bytes]:
    """The sample PNGs listed in samples/index.json, by file name, in label order."""
    index = json.loads((samples_dir / "index.json").read_text())
    names = sorted(index, key=lambda name: index[name]["label"])
    return {name: (samples_dir / name).read_bytes() for name in names}

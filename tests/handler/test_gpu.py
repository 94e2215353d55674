"""The same handler code on the GPU TorchServe assigns (gpu_id), checked against the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashion_serve.torchserve_runtime import TorchServeHandler
from tests.handler.helpers import handle_json, make_context, png_bytes, set_requests
from tests.support.parity import FP32, Tolerances, answer_problems, tf32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
EXPLAIN = {"explain": "True"}
# fp32 gradients on the CPU too: where the CPU computes bf16 natively, the handler's default
# would round the reference's gradients to bf16 (fashion_serve.ig).
CONFIG = {"handler": {"topk": 5, "ig_steps": 8, "bf16_gradients": False}}


def answers(tiny_export_dir, gpu_id):
    handler = TorchServeHandler()
    context = make_context(tiny_export_dir, CONFIG, gpu_id=gpu_id)
    handler.initialize(context)
    requests = [{"body": png_bytes()}, {"body": b"not an image"}, {"body": png_bytes()}]
    set_requests(context, [{}, {}, {**EXPLAIN, "X-Target": "Bag", "X-Steps": "16"}])
    responses = handle_json(handler, requests, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    return handler.service.device, responses, statuses


def delta_tolerance(explanation: dict, tolerances: Tolerances) -> float:
    """The convergence delta is sum(attributions) - (f(input) - f(baseline)): each term may
    move by the attributions' relative tolerance, so the delta by that much of their sizes."""
    attributions = np.asarray(explanation["attributions"], dtype=np.float64)
    gained = attributions.sum() - explanation["delta"]
    return tolerances.attribution_rtol * (np.abs(attributions).sum() + abs(gained))


def test_handler_runs_on_the_assigned_gpu_and_agrees_with_cpu(tiny_export_dir):
    # Full fp32 on the GPU (cuDNN would use TF32 by default), so the fp32 tolerances hold;
    # benchmarks/gpu_proof.py checks the answers with torch's defaults (TF32) too.
    with tf32(False):
        device, on_gpu, gpu_statuses = answers(tiny_export_dir, gpu_id=0)
    assert device.type == "cuda"
    _, on_cpu, cpu_statuses = answers(tiny_export_dir, gpu_id=None)
    assert gpu_statuses == cpu_statuses == [200, 400, 200]
    assert list(on_gpu[0]) == list(on_cpu[0])  # same classes in the same order
    for name, probability in on_cpu[0].items():
        assert on_gpu[0][name] == pytest.approx(probability, abs=FP32.probability_abs)
    assert on_gpu[2]["target_name"] == on_cpu[2]["target_name"] == "Bag"
    # Target, steps, probability, every attribution, and a PNG heatmap.
    assert answer_problems(on_cpu[2], on_gpu[2], FP32) == []
    assert on_gpu[2]["delta"] == pytest.approx(
        on_cpu[2]["delta"], abs=delta_tolerance(on_cpu[2], FP32)
    )

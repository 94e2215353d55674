"""The same handler code on the GPU TorchServe assigns (gpu_id), checked against the CPU."""

from __future__ import annotations

import pytest
import torch

import fashion_handler
from tests.handler.helpers import make_context, png_bytes, set_requests

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
EXPLAIN = {"explain": "True"}


def answers(tiny_export_dir, gpu_id):
    handler = fashion_handler.FashionHandler()
    context = make_context(tiny_export_dir, gpu_id=gpu_id)
    handler.initialize(context)
    requests = [{"body": png_bytes()}, {"body": b"not an image"}, {"body": png_bytes()}]
    set_requests(context, [{}, {}, {**EXPLAIN, "X-Target": "Bag", "X-Steps": "16"}])
    responses = handler.handle(requests, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    return handler.device, responses, statuses


def test_handler_runs_on_the_assigned_gpu_and_agrees_with_cpu(tiny_export_dir):
    device, on_gpu, gpu_statuses = answers(tiny_export_dir, gpu_id=0)
    assert device.type == "cuda"
    _, on_cpu, cpu_statuses = answers(tiny_export_dir, gpu_id=None)
    assert gpu_statuses == cpu_statuses == [200, 400, 200]
    assert list(on_gpu[0]) == list(on_cpu[0])  # same classes in the same order
    for name, probability in on_cpu[0].items():
        assert on_gpu[0][name] == pytest.approx(probability, abs=1e-4)
    assert on_gpu[2]["target_name"] == on_cpu[2]["target_name"] == "Bag"
    assert on_gpu[2]["probability"] == pytest.approx(on_cpu[2]["probability"], abs=1e-4)

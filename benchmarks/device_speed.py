"""Images/s of the handler on one device: handle() on raw PNG bodies, the model alone on a
ready tensor, and explanations, each at the given batch sizes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.inprocess import Pipeline, measure


def synchronized(call: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`call`, then wait for the device: CUDA runs asynchronously, so a call's time would
    otherwise stop when its kernels are queued, not when they are done."""
    if device.type != "cuda":
        return call

    def call_and_wait() -> None:
        call()
        torch.cuda.synchronize(device)

    return call_and_wait


def batch_of(images: list[bytes], size: int) -> list[bytes]:
    """`size` request bodies, cycling through `images` (different pictures, not one)."""
    return [images[i % len(images)] for i in range(size)]


def prediction_rates(
    pipeline: Pipeline, images: list[bytes], batch_sizes: list[int], seconds: float
) -> dict:
    """Per batch size: handle() on PNG bodies (parse, decode, tensor, model, top-k, JSON)
    and the model alone (FashionService.logits) on a tensor already there."""
    handler, device = pipeline.handler, pipeline.handler.service.device
    height, width = handler.service.input_size
    rates: dict = {"handle": {}, "model": {}}
    for size in batch_sizes:
        bodies = batch_of(images, size)
        ready = torch.randn(
            size, handler.service.contract.input_shape[0], height, width, device=device
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates["handle"][f"batch_{size}"] = measure(
            synchronized(lambda bodies=bodies: pipeline.predict(bodies), device), size, seconds
        )
        rates["model"][f"batch_{size}"] = measure(
            synchronized(lambda ready=ready: handler.service.logits(ready), device), size, seconds
        )
    return rates


def explanation_rates(
    pipeline: Pipeline, images: list[bytes], batch_sizes: list[int], seconds: float
) -> dict:
    """Per batch size: handle() on explanation requests at the default integrated-gradients
    steps (attributions, rounding and the heatmap PNG included)."""
    device = pipeline.handler.service.device
    rates: dict = {"steps": pipeline.handler.service.limits.default_steps}
    for size in batch_sizes:
        bodies = batch_of(images, size)
        rates[f"batch_{size}"] = measure(
            synchronized(lambda bodies=bodies: pipeline.explain(bodies), device), size, seconds
        )
    return rates

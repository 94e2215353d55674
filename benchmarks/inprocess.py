"""The in-process figures and the machine's ceiling: the TorchServe handler, initialized
as a worker initializes it (tests.support.handler_context), called without a server."""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fashion_serve.image import prepare_image
from fashion_serve.request import parse_request
from tests.support.handler_context import initialized_handler, set_requests


def prepare(handler, image_bytes: bytes, payload=None) -> tuple:
    """One one-image request's (H, W) uint8 pixels and options, by the handler's own
    functions."""
    parsed = parse_request(
        {"body": image_bytes if payload is None else payload},
        handler.service.contract.class_names,
        handler.service.limits,
        handler.service.settings.max_image_bytes,
    )
    (image,) = parsed.images
    pixels = prepare_image(
        image,
        handler.service.input_size,
        parsed.options.invert,
        handler.service.settings.max_image_pixels,
    )
    return pixels, parsed.options


class Pipeline:
    """The worker's path, in-process: TorchServeHandler.handle on a batch of raw image bodies
    (request parsing, decode, fit, tensor, model, softmax, top-k or integrated gradients),
    then the json.dumps(indent=2) TorchServe's worker applies to each answer."""

    def __init__(self, export_dir: Path, device: str = "cpu", batch_size: int = 8) -> None:
        self.handler, self.context = initialized_handler(export_dir, batch_size, device)

    def _handle(self, images: list[bytes], explain: bool) -> list[str]:
        set_requests(self.context, [{"explain": "True"} if explain else {}] * len(images))
        answers = self.handler.handle([{"body": image} for image in images], self.context)
        return [json.dumps(answer, indent=2) for answer in answers]  # as TorchServe sends it

    def predict(self, images: list[bytes]) -> list[str]:
        return self._handle(images, explain=False)

    def explain(self, images: list[bytes]) -> list[str]:
        return self._handle(images, explain=True)


def measure(call: Callable[[], object], images_per_call: int, duration_s: float) -> dict:
    """Call repeatedly for about `duration_s` after a warm-up; images/s and ms per call."""
    for _ in range(3):
        call()
    times = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    total = sum(times)
    return {
        "images_per_s": round(len(times) * images_per_call / total, 1),
        "calls": len(times),
        "batch_size": images_per_call,
        "p50_ms_per_call": round(statistics.median(times) * 1000, 3),
        "mean_ms_per_image": round(total / len(times) / images_per_call * 1000, 3),
    }


def _ceiling_worker(
    export_dir, device, image_bytes, batch_size, duration_s, explain, barrier, results
):  # fmt: skip
    pipeline = Pipeline(Path(export_dir), device, batch_size)
    torch.set_num_threads(1)
    call = pipeline.explain if explain else pipeline.predict
    images = [image_bytes] * batch_size
    for _ in range(5):
        call(images)
    barrier.wait()
    results.put(measure(lambda: call(images), batch_size, duration_s)["images_per_s"])


def machine_ceiling(
    export_dir: Path,
    device: str,
    image_bytes: bytes,
    batch_size: int,
    processes: int,
    seconds: float,
    explain: bool = False,
) -> dict:
    """One single-thread process per core at the served batch size, all at once, summed:
    predictions, or explanations (`explain`) at the default method and steps."""
    context = mp.get_context("spawn")  # a clean torch per process, no forked thread pools
    barrier = context.Barrier(processes)
    results = context.Queue()
    args = (str(export_dir), device, image_bytes, batch_size, seconds, explain, barrier, results)
    workers = [context.Process(target=_ceiling_worker, args=args) for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=seconds + 300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return {
        "images_per_s": round(sum(rates), 1),
        "processes": processes,
        "batch_size": batch_size,
        "per_process": rates,
    }


def in_process(
    export_dir: Path,
    image_bytes: bytes,
    batch_size: int,
    seconds: float,
    processes: int,
    device: str = "cpu",
) -> dict:
    """Images/s at batch 1 and `batch_size`, integrated gradients at batch 1, and the
    ceilings of predictions and of explanations."""
    pipeline = Pipeline(export_dir, device, batch_size)
    results = {
        "batch_1": measure(lambda: pipeline.predict([image_bytes]), 1, seconds),
        f"batch_{batch_size}": measure(
            lambda: pipeline.predict([image_bytes] * batch_size), batch_size, seconds
        ),
        "explain_batch_1": measure(lambda: pipeline.explain([image_bytes]), 1, seconds),
        "ig_steps": pipeline.handler.service.limits.default_steps,
    }
    for key, explain in (("ceiling", False), ("explain_ceiling", True)):
        results[key] = machine_ceiling(
            export_dir, device, image_bytes, batch_size, processes, seconds, explain
        )
    return results

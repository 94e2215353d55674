"""Helpers for the handler tests: images made with Pillow, and a real TorchServe Context
(tests.support.handler_context builds it as a worker does)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from ts.context import Context

from tests.support.handler_context import set_requests, worker_context


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def garment(width: int = 40, height: int = 40, light_background: bool = False) -> Image.Image:
    """A bright square "garment" in the middle of a dark picture (or the reverse), mode L."""
    background, item = (230, 20) if light_background else (0, 220)
    pixels = np.full((height, width), background, dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = item
    return Image.fromarray(pixels)


def png_bytes(**kwargs) -> bytes:
    return encode(garment(**kwargs), "PNG")


def make_context(
    model_dir, model_yaml_config: dict | None = None, gpu_id: int | None = None
) -> Context:
    """A real ts.context.Context as TorchServe's Service builds it, without a server."""
    return worker_context(
        model_dir,
        model_yaml_config or {"handler": {"topk": 5, "ig_steps": 8}},
        batch_size=8,
        gpu_id=gpu_id,
        model_name="fashion",
    )


def noise(width: int = 200, height: int = 200, seed: int = 0) -> Image.Image:
    """Random RGB pixels: compresses badly, so cutting the file short really truncates it."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


__all__ = ["encode", "garment", "make_context", "noise", "png_bytes", "set_requests"]


def handle_json(handler, requests: list[dict], context) -> list:
    """handler.handle's answers as objects (the describe call answers a JSON string)."""
    answers = handler.handle(requests, context)
    return [json.loads(a) if isinstance(a, (str, bytes)) else a for a in answers]

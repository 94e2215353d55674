"""The TorchServe handler without TorchServe: for scripts/bench.py and scripts/litserve_app.py.

A FashionHandler is initialized exactly as a TorchServe worker initializes it (a real
ts.context.Context over the exported model and handler/model-config.yaml), so whatever the
handler does to load or prepare its model, the in-process figures and the LitServe peer get
the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from servers import MODEL_NAME, model_config
from ts.context import Context, RequestProcessor

import fashion_handler
from fashion_image import prepare_image
from fashion_request import RequestOptions, parse_request


def initialized_handler(
    export_dir: Path, batch_size: int = 1, device: str = "cpu"
) -> tuple[fashion_handler.FashionHandler, Context]:
    """A FashionHandler after initialize(), and its context, as in a TorchServe worker."""
    model_dir = Path(tempfile.mkdtemp(prefix="inprocess-model-"))
    (model_dir / "model.pt").symlink_to((export_dir / "model.pt").resolve())
    manifest = {"model": {"modelName": MODEL_NAME, "serializedFile": "model.pt"}}
    gpu = torch.device(device).index or 0 if device.startswith("cuda") else None
    context = Context(
        MODEL_NAME, str(model_dir), manifest, batch_size, gpu, "0.12.0",
        model_yaml_config=model_config(),
    )  # fmt: skip
    handler = fashion_handler.FashionHandler()
    handler.initialize(context)
    return handler, context


def set_requests(context: Context, count: int, explain: bool = False) -> None:
    """What TorchServe's Service does before each batch: one header set per request."""
    headers = {"explain": "True"} if explain else {}
    context.request_processor = [RequestProcessor(dict(headers)) for _ in range(count)]


def prepare(handler, image_bytes: bytes, payload=None) -> tuple:
    """One request's (H, W) uint8 pixels and options, by the handler's own functions."""
    raw, options = parse_request(
        {"body": image_bytes if payload is None else payload},
        handler.contract.class_names,
        handler.limits,
        handler.settings.max_image_bytes,
    )
    pixels = prepare_image(
        raw, handler.input_size, options.invert, handler.settings.max_image_pixels
    )
    return pixels, options


__all__ = ["RequestOptions", "initialized_handler", "prepare", "set_requests"]

"""A TorchServe worker's handler without TorchServe: a TorchServeHandler initialized exactly
as a worker initializes it (a real ts.context.Context over the exported model and
handler/model-config.yaml), for the handler tests and the in-process benchmark."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ts.context import Context, RequestProcessor

from fashion_serve.torchserve_runtime import TorchServeHandler
from tests.support.servers import MODEL_NAME, model_config

TORCHSERVE_VERSION = "0.12.0"


def worker_context(
    model_dir: Path,
    model_yaml_config: dict | None = None,
    batch_size: int = 1,
    gpu_id: int | None = None,
    model_name: str = MODEL_NAME,
) -> Context:
    """A real ts.context.Context as a TorchServe worker builds it, without a server.
    `model_yaml_config` defaults to the repo's handler/model-config.yaml."""
    manifest = {"model": {"modelName": model_name, "serializedFile": "model.pt"}}
    if model_yaml_config is None:
        model_yaml_config = model_config()
    return Context(
        model_name, str(model_dir), manifest, batch_size, gpu_id, TORCHSERVE_VERSION,
        model_yaml_config=model_yaml_config,
    )  # fmt: skip


def initialized_handler(
    export_dir: Path,
    batch_size: int = 1,
    device: str = "cpu",
    model_yaml_config: dict | None = None,
) -> tuple[TorchServeHandler, Context]:
    """A TorchServeHandler after initialize(), and its context, as in a TorchServe worker
    (`model_yaml_config` defaults to the repo's handler/model-config.yaml)."""
    model_dir = Path(tempfile.mkdtemp(prefix="inprocess-model-"))
    (model_dir / "model.pt").symlink_to((export_dir / "model.pt").resolve())
    gpu_id = torch.device(device).index or 0 if device.startswith("cuda") else None
    context = worker_context(model_dir, model_yaml_config, batch_size, gpu_id)
    handler = TorchServeHandler()
    handler.initialize(context)
    return handler, context


def set_requests(context: Context, headers: list[dict]) -> None:
    """What TorchServe's Service does before each batch: one RequestProcessor per request."""
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]

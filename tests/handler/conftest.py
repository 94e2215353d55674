"""Fixtures for the handler tests."""

from __future__ import annotations

import pytest
import torch

from fashion_serve.torchserve_runtime import TorchServeHandler
from tests.handler.helpers import make_context


@pytest.fixture(scope="module")
def handler_and_context(tiny_export_dir):
    """A TorchServeHandler initialized as TorchServe would, over the tiny exported model."""
    context = make_context(tiny_export_dir)
    handler = TorchServeHandler()
    handler.initialize(context)
    return handler, context


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """initialize() sets torch's threads for the whole process, as a worker should; tests
    put the count back so that other tests in the same run keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

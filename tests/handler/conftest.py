"""Fixtures for the handler tests."""

from __future__ import annotations

import fashion_handler
import pytest

from tests.handler.helpers import make_context


@pytest.fixture(scope="module")
def handler_and_context(tiny_export_dir):
    """A FashionHandler initialized as TorchServe would, over the tiny exported model."""
    context = make_context(tiny_export_dir)
    handler = fashion_handler.FashionHandler()
    handler.initialize(context)
    return handler, context

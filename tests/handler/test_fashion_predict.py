"""Top-k in the shape TorchServe's image_classifier returns."""

from __future__ import annotations

import json

import torch

from fashion_serve.contract import load_torchscript
from fashion_serve.predict import inference_model, top_k_batch

NAMES = ("a", "b", "c", "d")


def test_top_k_batch_maps_names_to_probabilities_highest_first():
    probabilities = torch.tensor([[0.1, 0.6, 0.05, 0.25]])
    (result,) = top_k_batch(probabilities, NAMES, [3])
    assert list(result) == ["b", "d", "a"]
    assert result == {"b": 0.6, "d": 0.25, "a": 0.1}
    # JSON keeps the order, which is what clients read.
    assert list(json.loads(json.dumps(result))) == ["b", "d", "a"]


def test_top_k_batch_gives_each_example_its_own_k():
    probabilities = torch.tensor([[0.1, 0.6, 0.05, 0.25], [0.7, 0.1, 0.1, 0.1]])
    first, second = top_k_batch(probabilities, NAMES, [2, 1])
    assert first == {"b": 0.6, "d": 0.25}
    assert second == {"a": 0.7}


def test_inference_model_answers_like_the_exported_model(tiny_export_dir):
    model, _ = load_torchscript(tiny_export_dir / "model.pt")
    model.eval()
    fast = inference_model(model, torch.device("cpu"))
    images = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        for batch in (images[:1], images[:3], images):
            torch.testing.assert_close(fast(batch), model(batch), rtol=1e-4, atol=1e-4)
    # The original keeps its parameters and gradients for integrated gradients.
    assert any(p.requires_grad for p in model.parameters())

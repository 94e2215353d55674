"""Integrated gradients and the heatmap, on a tiny model whose answer is known."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from fashion_explain import (
    black_baseline,
    heatmap_base64,
    heatmap_png,
    integrated_gradients,
    round_attributions,
)


class LinearProbe(torch.nn.Module):
    """Class 0 scores the left half's sum, class 1 the right half's: IG is exact on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., :14].sum(dim=(1, 2, 3))
        right = x[..., 14:].sum(dim=(1, 2, 3))
        return torch.stack([left, right], dim=1)


def test_attributions_follow_each_examples_own_target():
    inputs = torch.ones(2, 1, 28, 28)
    baseline = torch.zeros(1, 28, 28)
    attributions, deltas = integrated_gradients(LinearProbe(), inputs, baseline, [0, 1], steps=8)
    assert attributions.shape == (2, 1, 28, 28) and deltas.shape == (2,)
    # Example 0 explains class 0: only the left half matters, 1 per pixel.
    assert torch.allclose(attributions[0, 0, :, :14], torch.ones(28, 14), atol=1e-5)
    assert torch.allclose(attributions[0, 0, :, 14:], torch.zeros(28, 14), atol=1e-5)
    assert torch.allclose(attributions[1, 0, :, 14:], torch.ones(28, 14), atol=1e-5)
    assert torch.allclose(attributions[1, 0, :, :14], torch.zeros(28, 14), atol=1e-5)
    assert deltas.abs().max() < 1e-3


def test_attributions_on_the_exported_cnn_converge(tiny_export_dir):
    from fashion_contract import load_torchscript

    model, contract = load_torchscript(tiny_export_dir / "model.pt")
    baseline = black_baseline(contract.mean, contract.std, (28, 28))
    inputs = torch.rand(3, 1, 28, 28)
    attributions, deltas = integrated_gradients(model, inputs, baseline, [0, 4, 9], steps=32)
    assert attributions.shape == (3, 1, 28, 28)
    with torch.no_grad():
        gap = model(inputs) - model(baseline.unsqueeze(0))
    gap = gap[torch.arange(3), torch.tensor([0, 4, 9])]
    # Completeness: attributions add up to f(x) - f(baseline), up to the reported delta.
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)) - gap, deltas, atol=1e-4)
    assert deltas.abs().max() < 0.05 * gap.abs().max() + 1e-3


def test_black_baseline_is_normalized_black():
    baseline = black_baseline((0.5,), (0.25,), (28, 28))
    assert baseline.shape == (1, 28, 28) and torch.all(baseline == -2.0)


def test_round_attributions_is_json_ready():
    rounded = round_attributions(np.array([[0.123456789, -1e-9], [12345.678, 0.0]]))
    assert rounded == [[0.1235, -1e-09], [1.235e04, 0.0]]
    assert all(type(v) is float for row in rounded for v in row)


def test_heatmap_is_an_upscaled_png_coloured_by_sign():
    pixels = np.zeros((28, 28), np.uint8)
    attributions = np.zeros((28, 28), np.float32)
    attributions[0, 0] = 1.0  # for the target: red
    attributions[27, 27] = -1.0  # against it: blue
    image = Image.open(io.BytesIO(heatmap_png(pixels, attributions)))
    assert image.format == "PNG" and image.size == (224, 224) and image.mode == "RGB"
    red, blue = image.getpixel((3, 3)), image.getpixel((220, 220))
    plain = image.getpixel((100, 100))
    assert red[0] > 150 and red[2] < 50
    assert blue[2] > 150 and blue[0] < 50
    assert plain == (0, 0, 0)
    decoded = base64.b64decode(heatmap_base64(pixels, attributions))
    assert Image.open(io.BytesIO(decoded)).size == (224, 224)


def test_heatmap_of_zero_attributions_is_the_input():
    pixels = np.full((28, 28), 128, np.uint8)
    image = Image.open(io.BytesIO(heatmap_png(pixels, np.zeros((28, 28), np.float32))))
    assert (np.asarray(image) == 128).all()

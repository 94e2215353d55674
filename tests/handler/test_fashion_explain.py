"""The explanation methods and the heatmap, on tiny models whose answers are known."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_serve.contract import load_torchscript
from fashion_serve.explain import (
    HEATMAP_SCALE,
    attribute,
    black_baseline,
    gradient_model,
    heatmap_base64,
    heatmap_png,
    integrated_gradients,
    outlier_threshold,
    png_bytes,
    round_attributions,
)
from fashion_serve.options import METHODS

PANEL = 28 * HEATMAP_SCALE  # one 28x28 panel, enlarged
HEATMAP_SIZE = (2 * PANEL + 4, PANEL)  # input, gap, overlay


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


class WeightedPixels(torch.nn.Module):
    """Two classes, each a weighted sum of the pixels: every method's answer is known."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.linspace(-1.0, 1.0, 2 * 28 * 28).view(2, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.weights).sum(dim=(2, 3, 4))


@pytest.fixture
def pixels_and_baseline():
    torch.manual_seed(0)
    return torch.rand(2, 1, 28, 28), torch.full((1, 28, 28), -0.5)


def explain(method, inputs, baseline, targets=(0, 1), steps=16, model=None):
    model = model or WeightedPixels()
    return attribute(method, model, model, inputs, baseline, targets, steps)[:2]


def test_integrated_gradients_of_a_linear_model_is_weight_times_distance(pixels_and_baseline):
    inputs, baseline = pixels_and_baseline
    attributions, deltas = explain("integrated_gradients", inputs, baseline)
    weights = WeightedPixels().weights
    assert torch.allclose(attributions, weights * (inputs - baseline), atol=1e-5)
    assert deltas.abs().max() < 1e-3


def test_saliency_is_the_gradients_magnitude(pixels_and_baseline):
    inputs, baseline = pixels_and_baseline
    attributions, deltas = explain("saliency", inputs, baseline)
    assert deltas is None
    assert torch.allclose(attributions, WeightedPixels().weights.abs(), atol=1e-6)


def test_input_x_gradient_is_input_times_weight(pixels_and_baseline):
    inputs, baseline = pixels_and_baseline
    attributions, deltas = explain("input_x_gradient", inputs, baseline, targets=(1, 0))
    weights = WeightedPixels().weights
    assert deltas is None
    assert torch.allclose(attributions, weights[[1, 0]] * inputs, atol=1e-6)


def test_occlusion_credits_each_pixel_with_the_score_its_patches_lose():
    inputs, baseline = torch.ones(2, 1, 28, 28), torch.zeros(1, 28, 28)
    attributions, deltas = explain("occlusion", inputs, baseline, model=LinearProbe())
    assert deltas is None
    # A 4x4 patch in the half that class 0 sums costs it 16; in the other half nothing.
    assert attributions[0, 0, 10, 5] == pytest.approx(16.0)
    assert attributions[0, 0, 10, 22] == pytest.approx(0.0)
    assert attributions[1, 0, 10, 22] == pytest.approx(16.0)


def test_every_method_runs_on_the_exported_cnn_through_its_gradient_copy(tiny_export_dir):
    model, contract = load_torchscript(tiny_export_dir / "model.pt")
    copy = gradient_model(model, torch.device("cpu"))
    inputs = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(copy(inputs), model(inputs), atol=1e-5)
    baseline = black_baseline(contract.mean, contract.std, (28, 28))
    for method in METHODS:
        attributions, _, _ = attribute(method, copy, model, inputs, baseline, [0, 4, 9], 8)
        assert attributions.shape == (3, 1, 28, 28) and torch.isfinite(attributions).all()
        assert attributions.abs().sum() > 0, method


def test_attributions_on_the_exported_cnn_converge(tiny_export_dir):
    model, contract = load_torchscript(tiny_export_dir / "model.pt")
    model = gradient_model(model, torch.device("cpu"))
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


def test_round_attributions_writes_the_digits_of_a_four_digit_format():
    generator = np.random.default_rng(0)
    for scale in (1e-25, 1e-9, 1e-3, 1.0, 1e4, 1e21):  # past both ends of the exact range
        values = (generator.standard_normal((28, 28)) * scale).astype(np.float32)
        values[0, :4] = (0.0, 1.0625, -2.5e-5, np.float32(1e-19))  # a tie, an edge
        expected = [[float(f"{v:.4g}") for v in row] for row in values.tolist()]
        rounded = round_attributions(values)
        assert rounded == expected
        assert json.dumps(rounded) == json.dumps(expected)  # the same shortest reprs


def overlay_pixel(image: Image.Image, row: int, column: int) -> tuple:
    """The overlay panel's pixel at the centre of input pixel (row, column)."""
    return image.getpixel((PANEL + 4 + column * HEATMAP_SCALE + 3, row * HEATMAP_SCALE + 3))


def test_heatmap_shows_the_input_beside_the_evidence_for_the_target():
    pixels = np.full((28, 28), 40, np.uint8)
    attributions = np.zeros((28, 28), np.float32)
    attributions[4:8, 4:8] = 1.0  # for the target
    attributions[20:24, 20:24] = -1.0  # against it
    image = Image.open(io.BytesIO(heatmap_png(pixels, attributions)))
    assert image.format == "PNG" and image.size == HEATMAP_SIZE and image.mode == "RGB"
    assert image.getpixel((50, 50)) == (40, 40, 40)  # the input panel
    red = overlay_pixel(image, 5, 5)
    assert red[0] > 180 and red[2] < 60
    dimmed = (22, 22, 22)  # the overlay panel shows the input at 55 % brightness
    assert overlay_pixel(image, 21, 21) == dimmed  # positive evidence only by default
    assert overlay_pixel(image, 14, 0) == dimmed
    decoded = base64.b64decode(heatmap_base64(pixels, attributions))
    assert Image.open(io.BytesIO(decoded)).size == HEATMAP_SIZE


def test_heatmap_with_both_signs_shows_evidence_against_in_blue():
    pixels = np.zeros((28, 28), np.uint8)
    attributions = np.zeros((28, 28), np.float32)
    attributions[4:8, 4:8] = 1.0
    attributions[20:24, 20:24] = -1.0
    image = Image.open(io.BytesIO(heatmap_png(pixels, attributions, sign="all")))
    red, blue = overlay_pixel(image, 5, 5), overlay_pixel(image, 21, 21)
    assert red[0] > 180 and red[2] < 60
    assert blue[2] > 180 and blue[0] < 60


def test_one_extreme_pixel_does_not_wash_out_the_rest():
    pixels = np.zeros((28, 28), np.uint8)
    attributions = np.zeros((28, 28), np.float32)
    attributions[2:22, 4:19] = 1.0  # 300 pixels
    attributions[25, 25] = 5.0  # under 2 % of the total: clipped at Captum's threshold
    image = Image.open(io.BytesIO(heatmap_png(pixels, attributions)))
    assert overlay_pixel(image, 8, 8)[0] > 180  # still drawn at full strength


def test_outlier_threshold_is_where_the_cumulative_sum_reaches_the_share():
    magnitudes = np.array([1.0] * 98 + [50.0, 50.0])  # total 198
    assert outlier_threshold(magnitudes, 2) == 50.0  # 98 % of 198 is past the 1s
    assert outlier_threshold(np.array([1.0] * 100), 2) == 1.0
    assert outlier_threshold(np.zeros(5), 2) == 0.0


def test_heatmap_of_zero_attributions_is_the_input_twice():
    pixels = np.full((28, 28), 128, np.uint8)
    image = np.asarray(Image.open(io.BytesIO(heatmap_png(pixels, np.zeros((28, 28))))))
    assert (image[:, :PANEL] == 128).all() and (image[:, PANEL + 4 :] == 70).all()  # dimmed
    assert (image[:, PANEL : PANEL + 4] == 255).all()  # the white gap


def test_png_bytes_decode_to_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    rgb[:, 1:] = rgb[:, :-1] // 2  # pixels darker than their left neighbour: "Sub" wraps at 256
    image = Image.open(io.BytesIO(png_bytes(rgb)))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (7, 5)
    assert (np.asarray(image) == rgb).all()
    tall = np.asarray(Image.open(io.BytesIO(png_bytes(rgb, repeat=3))))
    assert tall.shape == (15, 7, 3) and (tall == np.repeat(rgb, 3, axis=0)).all()


def test_heatmap_draws_each_input_pixel_as_one_block():
    pixels = np.random.default_rng(1).integers(0, 256, size=(28, 28), dtype=np.uint8)
    attributions = np.random.default_rng(2).normal(size=(28, 28)).astype(np.float32)
    image = np.asarray(Image.open(io.BytesIO(heatmap_png(pixels, attributions, sign="all"))))
    for panel in (image[:, :PANEL], image[:, PANEL + 4 :]):
        blocks = panel.reshape(28, HEATMAP_SCALE, 28, HEATMAP_SCALE, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
    assert (
        image[:, :PANEL, 0] == np.repeat(np.repeat(pixels, HEATMAP_SCALE, 0), HEATMAP_SCALE, 1)
    ).all()

"""Integrated-gradients explanations and a heatmap a person can look at."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import IntegratedGradients
from PIL import Image

HEATMAP_SCALE = 8  # 28x28 -> 224x224
ATTRIBUTION_SIGNIFICANT_DIGITS = 4
# Strongest attribution covers the image this much; weaker ones proportionally less.
MAX_OVERLAY_OPACITY = 0.75
_POSITIVE_RGB = np.array([255.0, 40.0, 0.0], dtype=np.float32)  # evidence for the target
_NEGATIVE_RGB = np.array([0.0, 120.0, 255.0], dtype=np.float32)  # evidence against it


def integrated_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: Sequence[int],
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions (N, C, H, W) and convergence deltas (N,) for each example's own target.

    `baseline` is one (C, H, W) input (a black image, normalized) shared by all examples.
    The deltas say how far the attributions' sum is from f(input) - f(baseline): near zero
    means enough steps.
    """
    explainer = IntegratedGradients(model)
    baselines = baseline.unsqueeze(0).expand_as(inputs).contiguous()
    with torch.enable_grad():
        attributions, deltas = explainer.attribute(
            inputs,
            baselines=baselines,
            target=list(targets),
            n_steps=steps,
            return_convergence_delta=True,
        )
    return attributions.detach(), deltas.detach()


def black_baseline(
    mean: Sequence[float], std: Sequence[float], size: tuple[int, int]
) -> torch.Tensor:
    """A black image, normalized like the model's inputs: (C, H, W)."""
    values = [(0.0 - m) / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).expand(-1, *size).clone()


def round_attributions(attributions: np.ndarray) -> list[list[float]]:
    """(H, W) attributions -> nested lists with 4 significant digits (JSON stays small)."""
    return [
        [float(f"{v:.{ATTRIBUTION_SIGNIFICANT_DIGITS}g}") for v in row]
        for row in attributions.tolist()
    ]


def heatmap_png(pixels: np.ndarray, attributions: np.ndarray, scale: int = HEATMAP_SCALE) -> bytes:
    """The (H, W) uint8 input with (H, W) attributions overlaid, as PNG bytes, `scale`x larger.

    Red marks pixels that pushed towards the target class, blue pixels that pushed away;
    opacity grows with the attribution's size relative to the largest.
    """
    gray = pixels.astype(np.float32)[..., None]  # (H, W, 1)
    peak = float(np.abs(attributions).max())
    strength = np.abs(attributions) / peak if peak > 0 else np.zeros_like(attributions)
    opacity = (MAX_OVERLAY_OPACITY * strength).astype(np.float32)[..., None]
    colour = np.where(attributions[..., None] >= 0, _POSITIVE_RGB, _NEGATIVE_RGB)
    blended = gray * (1.0 - opacity) + colour * opacity  # (H, W, 3)
    image = Image.fromarray(np.rint(blended).astype(np.uint8))
    height, width = pixels.shape
    image = image.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; the PNG is small either way
    return buffer.getvalue()


def heatmap_base64(pixels: np.ndarray, attributions: np.ndarray) -> str:
    return base64.b64encode(heatmap_png(pixels, attributions)).decode("ascii")

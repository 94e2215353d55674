"""Explanations, and a heatmap a person can read.

Integrated gradients, saliency and input x gradient run on fashion_serve.ig's chain, written
out for the FashionCNN's plain chain of layers; Captum computes them on a model that is no
such chain, and computes occlusion.

Methods (the request's `method` option; docs/api.md says what each shows and costs):
- integrated_gradients (default): attributions along the straight path from a black image,
  with a convergence delta that says whether the steps were enough;
- saliency: |d score / d pixel| at the input, one backward pass;
- input_x_gradient: input times gradient, one backward pass;
- occlusion: how much the score drops when a square patch is blacked out, forward passes only.
"""

from __future__ import annotations

import base64
import struct
import threading
import warnings
import zlib
from collections.abc import Sequence
from copy import deepcopy

import numpy as np
import torch

from fashion_serve.contract import quiet_jit
from fashion_serve.ig import POINTS_PER_PASS, PathThreads, ReluChain
from fashion_serve.options import AUTO_STEPS, DEFAULT_DELTA_TOLERANCE, INTEGRATED_GRADIENTS

OCCLUSION_WINDOW = 4  # px, a square patch
# px between patches: (28 - 4) / 3 + 1 = 9 positions per side, 81 occluded copies. Captum
# runs the input, then the copies 64 at a time: 3 forward passes (the input, 64, 17).
OCCLUSION_STRIDE = 3
OCCLUSION_PATCHES_PER_PASS = 64  # occluded copies per forward pass

ATTRIBUTION_SIGNIFICANT_DIGITS = 4
HEATMAP_SCALE = 6  # 28x28 -> 168x168 per panel, each input pixel a 6x6 block
HEATMAP_GAP_PX = 4
# Captum's visualization convention: scale by the value below which 98 % of the total
# |attribution| lies, so one extreme pixel does not wash the rest out (outlier_perc=2).
HEATMAP_OUTLIER_PERCENT = 2
# Pixel attributions of a CNN are speckled: shown blurred over about one input pixel, they
# read as regions. Only the picture is smoothed; the answer's attributions are not.
HEATMAP_BLUR_PX = 1.0  # Gaussian radius, in input pixels
BACKGROUND_DIM = 0.55  # the overlay panel's input is dimmed so the colour stands out
MAX_OVERLAY_OPACITY = 0.9
OPACITY_GAMMA = 1.5  # weak evidence fades faster than strong: the regions that matter stand out
# Colour by strength: for the target dark red -> yellow, against it dark blue -> cyan.
_POSITIVE_RGB = (np.array([200.0, 0.0, 0.0]), np.array([255.0, 230.0, 0.0]))
_NEGATIVE_RGB = (np.array([0.0, 40.0, 200.0]), np.array([0.0, 230.0, 255.0]))


def captum_attr():
    """captum.attr, imported on first use: about a second of a worker's start (it brings
    matplotlib) that the default path, fashion_serve.ig, never needs. warm_captum() imports
    it in the background once the model is serving."""
    import captum.attr

    return captum.attr


def warm_captum() -> None:
    """Import Captum on a daemon thread, so that the first cheap explanation does not wait."""
    threading.Thread(target=captum_attr, name="captum-import", daemon=True).start()


def gradient_model(model: torch.jit.ScriptModule, device: torch.device) -> torch.nn.Module:
    """The model to take input gradients of: a frozen copy (BatchNorm folded into the
    convolutions, weights as constants) in channels-last layout, which keeps autograd for
    the input and runs forward and backward faster (docs/performance.md). Same outputs as
    `model` within float rounding (tests/handler/test_fashion_explain.py)."""
    # Layout first: freezing turns the weights into constants, which .to() no longer reaches.
    with warnings.catch_warnings():
        # A copied ScriptModule's parameters are not leaves; .to() reads their (empty) .grad.
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor")
        copy = deepcopy(model).to(device=device, memory_format=torch.channels_last)
    with quiet_jit():
        return torch.jit.freeze(torch.jit.script(copy).eval())


def attribute(
    method: str,
    gradient_model: torch.nn.Module,
    forward_model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: Sequence[int],
    steps: int | str,
    chain: ReluChain | None = None,
    logits: torch.Tensor | None = None,
    threads: PathThreads | None = None,
    tolerance: float = DEFAULT_DELTA_TOLERANCE,
    max_steps: int = 200,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attributions (N, C, H, W) for each example's own target, and for integrated gradients
    the convergence deltas (N,): how far the attributions' sum is from f(input) -
    f(baseline), near zero when the steps were enough, and the steps each image took (N,).
    `steps` AUTO_STEPS: as many as each image needs for |delta| <= `tolerance`, within
    `max_steps`. `baseline` is one (C, H, W) input (a black image, normalized).
    `forward_model` needs no gradients (occlusion uses it); the gradient methods run on
    `chain` where the model is one (fashion_serve.ig; integrated gradients take f(input) from
    `logits` where given, and split the path points across `threads` where given), else on
    `gradient_model` through Captum."""
    targets = list(targets)
    if method == INTEGRATED_GRADIENTS:
        if steps == AUTO_STEPS and chain is not None:
            return chain.integrated_gradients_to_tolerance(
                inputs, baseline, targets, tolerance, max_steps, logits, threads
            )
        if steps == AUTO_STEPS:
            return integrated_gradients_to_tolerance(
                gradient_model, inputs, baseline, targets, tolerance, max_steps
            )
        if chain is not None:
            attributions, deltas = chain.integrated_gradients(
                inputs, baseline, targets, steps, logits, threads
            )
        else:
            attributions, deltas = integrated_gradients(
                gradient_model, inputs, baseline, targets, steps
            )
        return attributions, deltas, torch.full((len(targets),), steps)
    if method == "occlusion":
        return occlusion(forward_model, inputs, baseline, targets), None, None
    if chain is not None:
        gradients = chain.input_gradients(inputs, targets)
        return (gradients.abs() if method == "saliency" else inputs * gradients), None, None
    attr = captum_attr()
    explainer = (attr.Saliency if method == "saliency" else attr.InputXGradient)(gradient_model)
    with torch.enable_grad():
        inputs = _channels_last(inputs).detach().requires_grad_()
        attributions = explainer.attribute(inputs, target=targets)
    return attributions.detach(), None, None


def integrated_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: Sequence[int],
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients (Gauss-Legendre nodes, Captum's default) and convergence deltas."""
    baselines = baseline.unsqueeze(0).expand_as(inputs)
    with torch.enable_grad():
        attributions, deltas = (
            captum_attr()
            .IntegratedGradients(model)
            .attribute(
                _channels_last(inputs),
                baselines=_channels_last(baselines),
                target=list(targets),
                n_steps=steps,
                internal_batch_size=max(POINTS_PER_PASS, steps),
                return_convergence_delta=True,
            )
        )
    return attributions.detach(), deltas.detach()


def integrated_gradients_to_tolerance(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: Sequence[int],
    tolerance: float,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captum's integrated gradients with steps "auto" (a model that is no ReluChain): 16
    Gauss-Legendre steps, doubled for the images whose |delta| is over `tolerance`, up to
    `max_steps`. Gauss-Legendre nodes are not nested, so each round starts over."""
    attributions, deltas = integrated_gradients(model, inputs, baseline, targets, 16)
    used = torch.full((len(targets),), 16)
    steps = 32
    while steps <= max_steps:
        pending = ((deltas.abs() > tolerance).cpu() & (used == steps // 2)).nonzero().flatten()
        if not len(pending):
            break
        again, again_deltas = integrated_gradients(
            model, inputs[pending], baseline, [targets[i] for i in pending], steps
        )
        attributions[pending], deltas[pending], used[pending] = again, again_deltas, steps
        steps *= 2
    return attributions, deltas, used


def occlusion(
    model: torch.nn.Module, inputs: torch.Tensor, baseline: torch.Tensor, targets: Sequence[int]
) -> torch.Tensor:
    """The target's score drop when each OCCLUSION_WINDOW square is set to the baseline,
    spread over the pixels it covers (Captum averages overlapping windows)."""
    channels = inputs.shape[1]
    with torch.inference_mode():
        return (
            captum_attr()
            .Occlusion(model)
            .attribute(
                inputs,
                sliding_window_shapes=(channels, OCCLUSION_WINDOW, OCCLUSION_WINDOW),
                strides=(channels, OCCLUSION_STRIDE, OCCLUSION_STRIDE),
                baselines=baseline.unsqueeze(0),
                target=list(targets),
                perturbations_per_eval=OCCLUSION_PATCHES_PER_PASS,
            )
        )


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def black_baseline(
    mean: Sequence[float], std: Sequence[float], size: tuple[int, int]
) -> torch.Tensor:
    """A black image, normalized like the model's inputs: (C, H, W)."""
    values = [(0.0 - m) / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).expand(-1, *size).clone()


def round_attributions(attributions: np.ndarray) -> list[list[float]]:
    """(H, W) attributions -> nested lists with 4 significant digits (JSON stays small).

    A tenth of the cost of float(f"{v:.4g}") for each value, with the same digits but where
    v * 10**k lies within float rounding of a half: each value is rounded to an integer of 4
    digits times 10**-k. For -16 <= k <= 22 both are exact doubles, and the quotient (or
    product) is the double nearest that decimal, so its shortest repr, the one json writes, is
    the decimal itself. The rare others (zero aside: below 1e-19 or from 1e19 on, or not
    finite) take the f-string."""
    values = attributions.astype(np.float64)
    magnitude = np.abs(values)
    exact = (magnitude == 0) | ((magnitude >= 1e-19) & (magnitude < 1e19))
    exponents = np.floor(np.log10(np.where(exact & (magnitude > 0), magnitude, 1.0)))
    decimals = ATTRIBUTION_SIGNIFICANT_DIGITS - 1 - exponents  # digits after the point
    up, down = 10.0 ** np.maximum(decimals, 0), 10.0 ** np.maximum(-decimals, 0)
    rounded = (np.rint(values * up / down) * down / up).tolist()
    for row, column in np.argwhere(~exact):
        rounded[row][column] = float(f"{values[row, column]:.{ATTRIBUTION_SIGNIFICANT_DIGITS}g}")
    return rounded


def outlier_threshold(magnitudes: np.ndarray, outlier_percent: float) -> float:
    """The value below which (100 - outlier_percent) % of the summed magnitudes lie: Captum's
    visualization scale (captum.attr.visualization._cumulative_sum_threshold)."""
    ordered = np.sort(magnitudes.ravel())
    cumulative = np.cumsum(ordered)
    if cumulative[-1] <= 0:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * (100 - outlier_percent) / 100))
    return float(ordered[min(index, len(ordered) - 1)])


def scaled_attributions(attributions: np.ndarray, sign: str) -> np.ndarray:
    """(H, W) attributions -> values in [-1, 1] (or [0, 1] for sign="positive"), outliers
    clipped at Captum's threshold."""
    values = np.clip(attributions, 0.0, None) if sign == "positive" else attributions
    limit = outlier_threshold(np.abs(values), HEATMAP_OUTLIER_PERCENT)
    if limit <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip(values / limit, -1.0, 1.0).astype(np.float32)


def gaussian_blur(values: np.ndarray, sigma_px: float) -> np.ndarray:
    """A (H, W) map blurred with a Gaussian of `sigma_px` (separable, edges zero-padded,
    unnormalized: the heatmap scales by its peak): K_rows @ values @ K_cols.T."""
    height, width = values.shape
    return (_blur_matrix(height, sigma_px) @ values @ _blur_matrix(width, sigma_px).T).astype(
        np.float32
    )


def _blur_matrix(size: int, sigma_px: float) -> np.ndarray:
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]  # (size, size)
    return np.exp(-0.5 * (offsets / sigma_px) ** 2) * (np.abs(offsets) <= 3 * sigma_px)


def heatmap_png(
    pixels: np.ndarray, attributions: np.ndarray, sign: str = "positive", scale: int = HEATMAP_SCALE
) -> bytes:
    """The (H, W) uint8 input beside the same input with its (H, W) attributions overlaid,
    both `scale`x larger, as PNG bytes. Red marks evidence for the target class, blue (with
    sign="all") evidence against it; colour and opacity grow with strength.

    Everything is worked out at the input's 28x28 and each input pixel is drawn as a
    `scale`x`scale` block: the picture shows the pixels the model saw, and its rows repeat,
    which png_bytes encodes as runs of zeros (well under a millisecond, docs/performance.md)."""
    strength = gaussian_blur(scaled_attributions(attributions, sign), HEATMAP_BLUR_PX)
    peak = float(np.abs(strength).max())
    strength = (strength / peak if peak > 0 else strength)[..., None]  # (H, W, 1)
    magnitude = np.abs(strength)
    colour = np.where(
        strength >= 0,
        _POSITIVE_RGB[0] + magnitude * (_POSITIVE_RGB[1] - _POSITIVE_RGB[0]),
        _NEGATIVE_RGB[0] + magnitude * (_NEGATIVE_RGB[1] - _NEGATIVE_RGB[0]),
    )
    opacity = MAX_OVERLAY_OPACITY * magnitude**OPACITY_GAMMA
    gray = pixels[..., None].astype(np.float32)  # (H, W, 1)
    overlaid = colour * opacity + gray * BACKGROUND_DIM * (1 - opacity)  # "over" a dimmed input
    height, width = pixels.shape
    rows = np.full((height, 2 * width * scale + HEATMAP_GAP_PX, 3), 255, np.uint8)  # white gap
    rows[:, : width * scale] = np.repeat(pixels, scale, axis=1)[..., None]
    rows[:, width * scale + HEATMAP_GAP_PX :] = np.repeat(
        np.rint(overlaid).clip(0, 255).astype(np.uint8), scale, axis=1
    )
    return png_bytes(rows, repeat=scale)


def png_bytes(rgb: np.ndarray, repeat: int = 1) -> bytes:
    """An (H, W, 3) uint8 image as PNG, each row shown `repeat` times (H * repeat rows high).

    A row is "Sub"-filtered (minus the pixel to its left: zeros along a block of one colour)
    and its repeats "Up"-filtered (minus the row above: all zeros), then zlib at its fastest
    level compresses what is mostly runs of zeros. Pillow's encoder would try every filter on
    every row of the full-size picture (docs/performance.md#explanations)."""
    height, width, _ = rgb.shape
    rows = rgb.reshape(height, width * 3)
    filtered = np.zeros((height, repeat, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0, 0] = 1  # PNG filter type 1, "Sub"
    filtered[:, 1:, 0] = 2  # PNG filter type 2, "Up"
    filtered[:, 0, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 0, 4:])  # modulo 256, as PNG says
    header = struct.pack(">IIBBBBB", width, height * repeat, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)),
        _png_chunk(b"IEND", b""),
    ))  # fmt: skip


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def heatmap_base64(pixels: np.ndarray, attributions: np.ndarray, sign: str = "positive") -> str:
    return base64.b64encode(heatmap_png(pixels, attributions, sign)).decode("ascii")

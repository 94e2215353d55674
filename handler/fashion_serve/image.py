"""Image bytes -> the (N, C, H, W) tensor the model was trained on.

FashionMNIST items are light garments on a black background, 28x28, grayscale. A person
sends anything Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF, ...), in any size, maybe
rotated by EXIF, maybe with transparency, maybe a dark item photographed on a light table.
These functions bring such an image to the training distribution as far as is cheap.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from fashion_serve import errors

ACCEPTED_FORMATS = "PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF"
# Above this border brightness (0..1) the background is taken to be light, so the image is
# inverted to light-on-black like FashionMNIST. See should_invert.
AUTO_INVERT_BORDER_BRIGHTNESS = 0.5
# decode_image leaves (format, width, height) as sent under this key of Image.info.
SOURCE_INFO = "fashion_source"

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit, and "I" (32-bit)


def decode_image(image_bytes: bytes, max_pixels: int, draft_size: tuple[int, int]) -> Image.Image:
    """Decode to an upright grayscale image: mode "L", or "LA" where the image has transparency.

    Refuses an image above `max_pixels` from its header, before decoding a pixel, so a
    decompression bomb costs nothing. JPEGs are decoded at a reduced scale (Pillow's draft)
    no smaller than `draft_size` (H, W), which is most of a JPEG's decoding time saved.
    """
    if not image_bytes:
        raise errors.empty_request("The request holds no image bytes: send one image.")
    try:
        image = Image.open(io.BytesIO(image_bytes))
    except Image.DecompressionBombError as exc:
        raise errors.image_too_large(
            f"The image is too large to decode ({exc}); send at most {max_pixels:,} pixels."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise errors.invalid_image(
            f"The body is not an image Pillow can read; send a {ACCEPTED_FORMATS} file."
        ) from exc

    width, height = image.size
    if width * height > max_pixels:
        raise errors.image_too_large(
            f"The image is {width}x{height} = {width * height:,} pixels; "
            f"at most {max_pixels:,} are accepted. Resize it before sending."
        )
    if width == 0 or height == 0:
        raise errors.invalid_image(f"The image is {width}x{height}: it has no pixels.")

    if image.format == "JPEG":
        # Grayscale straight from the decoder, at the smallest DCT scale still >= twice the
        # model's input: the later resize then has enough pixels to antialias from.
        side = 2 * max(draft_size)
        image.draft("L", (side, side))
    try:
        image.load()
    except Exception as exc:  # Pillow's decoders raise many kinds on a broken file
        if isinstance(exc, MemoryError):
            raise
        raise errors.invalid_image(
            f"The image could not be decoded: it is truncated or corrupt ({exc}). "
            f"Send a complete {ACCEPTED_FORMATS} file."
        ) from exc

    source_format = image.format
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        image = _to_luminance(image)
    except Exception as exc:  # a broken EXIF block, or a mode Pillow cannot convert (LAB)
        if isinstance(exc, MemoryError):
            raise
        raise errors.invalid_image(
            f"The {source_format or ''} image (mode {image.mode}) could not be turned upright "
            f"and gray ({exc}). Send an ordinary grayscale or RGB {ACCEPTED_FORMATS} file."
        ) from exc
    # Conversions and JPEG drafts lose the format and size as sent; the input metrics count them.
    image.info[SOURCE_INFO] = (source_format or "", width, height)
    return image


def _to_luminance(image: Image.Image) -> Image.Image:
    """Grayscale, keeping an alpha channel where there is one ("L" or "LA")."""
    if image.mode in ("L", "LA"):
        return image
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        return image.convert("LA" if has_alpha else "L")
    if image.mode in _ALPHA_MODES:
        return image.convert("LA")
    if image.mode in _INTEGER_MODES or image.mode == "F":
        # Pillow's own conversion clips wide and float pixels to 255; scale them instead, by
        # the range the values use: [0, 1] floats, 8 or 16 bits, or else the brightest pixel.
        values = np.asarray(image, dtype=np.float32)
        brightest = float(values.max())
        peak = 1.0 if image.mode == "F" and brightest <= 1.0 else 255.0
        if image.mode != "F" and brightest > 255:
            peak = 65535.0 if brightest <= 65535 else brightest
        scaled = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled)
    return image.convert("L")


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize keeping the aspect ratio, flatten alpha, and centre on an (H, W) uint8 canvas.

    Transparent pixels become black when the visible content is light and white when it is
    dark, so the item always stands out from its background. The padding takes the colour
    of the resized image's border, so it reads as more background, not as a frame.
    """
    height, width = size
    scale = min(width / image.width, height / image.height)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)

    if image.mode == "LA":
        pixels = _composite_alpha(np.asarray(image))
    else:
        pixels = np.asarray(image, dtype=np.uint8)

    if pixels.shape == (height, width):
        return pixels
    fill = round(float(border_pixels(pixels).mean()))
    canvas = np.full((height, width), fill, dtype=np.uint8)
    top = (height - pixels.shape[0]) // 2
    left = (width - pixels.shape[1]) // 2
    canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return canvas


def _composite_alpha(gray_alpha: np.ndarray) -> np.ndarray:
    gray = gray_alpha[..., 0].astype(np.float32)
    alpha = gray_alpha[..., 1].astype(np.float32) / 255.0
    coverage = float(alpha.sum())
    content_brightness = float((gray * alpha).sum()) / coverage if coverage > 0 else 255.0
    background = 0.0 if content_brightness >= 128 else 255.0
    flat = gray * alpha + background * (1.0 - alpha)
    return np.rint(flat).astype(np.uint8)


def border_pixels(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of a 2-D image, as a flat array."""
    if min(pixels.shape) <= 2:
        return pixels.ravel()
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def should_invert(pixels: np.ndarray, invert: str) -> bool:
    """Whether to invert a fitted uint8 image: "true", "false", or "auto".

    Auto: invert when the mean brightness of the image's outer ring of pixels is above
    AUTO_INVERT_BORDER_BRIGHTNESS (0.5 of white), i.e. a light background, the opposite of
    FashionMNIST's black one.
    """
    if invert == "true":
        return True
    if invert == "false":
        return False
    return float(border_pixels(pixels).mean()) / 255.0 > AUTO_INVERT_BORDER_BRIGHTNESS


@dataclass(frozen=True)
class ImageFacts:
    """What an accepted image looked like before it became the model's input (for metrics)."""

    format: str  # Pillow's format name, e.g. "PNG"; "" when Pillow names none
    width: int  # as sent (header size, before any rotation), pixels
    height: int
    auto_inverted: bool  # inverted by the "auto" rule (a light background), not on request


def prepare_image_with_facts(
    image_bytes: bytes, size: tuple[int, int], invert: str, max_pixels: int
) -> tuple[np.ndarray, ImageFacts]:
    """Image bytes -> the (H, W) uint8 image the model sees (before normalization), and
    the facts about the input that the drift metrics count."""
    image = decode_image(image_bytes, max_pixels, size)
    pixels = fit_to_size(image, size)
    inverted = should_invert(pixels, invert)
    if inverted:
        pixels = 255 - pixels
    source_format, width, height = image.info[SOURCE_INFO]
    facts = ImageFacts(source_format, width, height, auto_inverted=inverted and invert == "auto")
    return pixels, facts


def prepare_image(
    image_bytes: bytes, size: tuple[int, int], invert: str, max_pixels: int
) -> np.ndarray:
    """Image bytes -> the (H, W) uint8 image the model sees (before normalization)."""
    return prepare_image_with_facts(image_bytes, size, invert, max_pixels)[0]


def to_batch_tensor(
    images: Sequence[np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Stack (H, W) uint8 images into one normalized float batch (N, C, H, W) on `device`.

    Normalized in numpy on the host: for 28x28 images torch's per-op overhead costs more
    than the arithmetic. Grayscale is repeated over C channels when the contract has more.
    """
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, -1, 1, 1)
    shift = (-np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(
        1, -1, 1, 1
    )
    stacked = np.stack(images)[:, None]  # (N, 1, H, W) uint8
    batch = torch.from_numpy(stacked * scale + shift)  # (N, C, H, W) float32
    return batch if torch.device(device).type == "cpu" else batch.to(device)

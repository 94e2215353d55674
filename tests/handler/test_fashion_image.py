"""Decoding, fitting, inversion and batching of images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_serve import errors
from fashion_serve.image import (
    border_pixels,
    decode_image,
    fit_to_size,
    prepare_image,
    should_invert,
    to_batch_tensor,
)
from tests.handler.helpers import encode, garment, noise

SIZE = (28, 28)
MAX_PIXELS = 36_000_000


def centre_and_corner(pixels: np.ndarray) -> tuple[int, int]:
    return int(pixels[14, 14]), int(pixels[0, 0])


@pytest.mark.parametrize(
    ("fmt", "save_args"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("GIF", {}),
        ("TIFF", {}),
    ],
)
def test_each_format_decodes_to_a_light_item_on_black(fmt, save_args):
    image_bytes = encode(garment(80, 80).convert("RGB"), fmt, **save_args)
    pixels = prepare_image(image_bytes, SIZE, "auto", MAX_PIXELS)
    assert pixels.shape == SIZE and pixels.dtype == np.uint8
    centre, corner = centre_and_corner(pixels)
    assert centre > 180 and corner < 40


def test_large_jpeg_is_decoded_at_reduced_scale_but_keeps_the_picture():
    image_bytes = encode(garment(2000, 2000).convert("RGB"), "JPEG", quality=90)
    image = decode_image(image_bytes, MAX_PIXELS, SIZE)
    # draft picks the smallest DCT scale (1/8) still at least 2x the model input.
    assert image.size == (250, 250) and image.mode == "L"
    centre, corner = centre_and_corner(prepare_image(image_bytes, SIZE, "false", MAX_PIXELS))
    assert centre > 180 and corner < 40


def test_gif_takes_the_first_frame():
    first = garment(40, 40)
    second = Image.new("L", (40, 40), 0)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100)
    pixels = prepare_image(buffer.getvalue(), SIZE, "false", MAX_PIXELS)
    assert pixels[14, 14] > 180


def test_exif_orientation_is_honoured():
    # A wide picture whose bright half is on the left, tagged "rotate 90 CW to view"
    # (orientation 6): upright, the bright half is on top.
    pixels = np.zeros((40, 80), dtype=np.uint8)
    pixels[:, :40] = 255
    image = Image.fromarray(pixels).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    image_bytes = encode(image, "JPEG", quality=95, exif=exif)
    upright = decode_image(image_bytes, MAX_PIXELS, SIZE)
    assert upright.size == (40, 80)
    array = np.asarray(upright)
    assert array[:30].mean() > 200 and array[-30:].mean() < 50


def test_rgba_light_item_on_transparency_goes_on_black():
    rgba = Image.new("RGBA", (40, 40), (255, 255, 255, 0))  # transparent white
    rgba.paste((250, 250, 250, 255), (10, 10, 30, 30))
    pixels = prepare_image(encode(rgba, "PNG"), SIZE, "auto", MAX_PIXELS)
    centre, corner = centre_and_corner(pixels)
    assert centre > 200 and corner < 30


def test_rgba_dark_item_on_transparency_ends_light_on_black():
    # Composited onto white (contrast), then auto-inverted like any light background.
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((20, 20, 20, 255), (10, 10, 30, 30))
    pixels = prepare_image(encode(rgba, "PNG"), SIZE, "auto", MAX_PIXELS)
    centre, corner = centre_and_corner(pixels)
    assert centre > 200 and corner < 30


def test_palette_png_with_transparency_and_16_bit_png():
    palette = garment(40, 40).convert("P")
    palette.info["transparency"] = 0
    assert decode_image(encode(palette, "PNG", transparency=0), MAX_PIXELS, SIZE).mode == "LA"
    deep = Image.fromarray(np.asarray(garment(40, 40)).astype(np.uint16) * 257)
    pixels = prepare_image(encode(deep, "PNG"), SIZE, "false", MAX_PIXELS)
    assert pixels[14, 14] > 180  # scaled from 16 bits, not clipped to white everywhere
    assert pixels[0, 0] < 40


def test_32_bit_tiff_is_scaled_by_its_brightest_pixel():
    levels = np.array([[0, 1_000_000, 2_000_000]], dtype=np.int32).repeat(3, axis=0)  # mode I
    gray = decode_image(encode(Image.fromarray(levels), "TIFF"), MAX_PIXELS, SIZE)
    assert gray.mode == "L"
    assert np.asarray(gray)[0].tolist() == [0, 127, 255]  # not white past 16 bits


def test_fit_keeps_aspect_ratio_and_centres_with_background_padding():
    wide = Image.new("L", (56, 14), 0)
    wide.paste(255, (0, 0, 56, 14))  # all white, 4:1
    pixels = fit_to_size(wide, SIZE)
    assert pixels.shape == SIZE
    # 56x14 -> 28x7, centred: rows 10..16 white; the padding takes the border colour
    # (white here), so the whole canvas is white.
    assert (pixels == 255).all()

    wide_dark_border = Image.new("L", (56, 14), 0)
    wide_dark_border.paste(255, (8, 4, 48, 10))
    fitted = fit_to_size(wide_dark_border, SIZE)
    bright_rows = np.where(fitted.max(axis=1) > 100)[0]
    assert bright_rows.min() >= 10 and bright_rows.max() <= 17  # centred vertically
    assert fitted[0].max() == 0  # padding is the dark border colour


def test_tiny_image_is_upscaled():
    pixels = fit_to_size(garment(7, 7), SIZE)
    assert pixels.shape == SIZE and pixels[14, 14] > 180


def test_explicit_and_automatic_inversion():
    dark_bg = np.asarray(fit_to_size(garment(28, 28), SIZE))
    light_bg = np.asarray(fit_to_size(garment(28, 28, light_background=True), SIZE))
    assert not should_invert(dark_bg, "auto")
    assert should_invert(light_bg, "auto")
    assert should_invert(dark_bg, "true")
    assert not should_invert(light_bg, "false")

    photo = encode(garment(60, 60, light_background=True), "PNG")
    auto = prepare_image(photo, SIZE, "auto", MAX_PIXELS)
    kept = prepare_image(photo, SIZE, "false", MAX_PIXELS)
    assert centre_and_corner(auto) == (255 - kept[14, 14], 255 - kept[0, 0])
    assert auto[14, 14] > 200 and auto[0, 0] < 40


def test_border_pixels_is_the_outer_ring():
    pixels = np.arange(16).reshape(4, 4)
    assert sorted(border_pixels(pixels).tolist()) == [0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 14, 15]


def test_batch_tensor_is_normalized_with_the_contract():
    images = [np.zeros(SIZE, np.uint8), np.full(SIZE, 255, np.uint8)]
    batch = to_batch_tensor(images, (0.25,), (0.5,))
    assert batch.shape == (2, 1, 28, 28) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], torch.full((1, 28, 28), -0.5))
    assert torch.allclose(batch[1], torch.full((1, 28, 28), 1.5))
    three = to_batch_tensor(images, (0.0, 0.5, 1.0), (1.0, 1.0, 1.0))
    assert three.shape == (2, 3, 28, 28) and three[1, :, 0, 0].tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("image_bytes", "kind"),
    [
        (b"", "EmptyRequest"),
        (b"this is text, not a picture", "InvalidImage"),
        (encode(noise(), "PNG")[:5000], "InvalidImage"),
        (encode(noise(), "JPEG")[:5000], "InvalidImage"),
        (encode(Image.new("LAB", (32, 32)), "TIFF"), "InvalidImage"),  # Pillow cannot gray it
    ],
    ids=["empty", "not-an-image", "truncated-png", "truncated-jpeg", "lab-tiff"],
)
def test_bad_images_are_refused_with_400(image_bytes, kind):
    with pytest.raises(errors.RequestError) as caught:
        prepare_image(image_bytes, SIZE, "auto", MAX_PIXELS)
    assert caught.value.code == 400 and caught.value.kind == kind


def decompression_bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height; no pixel data is ever made."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [7000, 20000])
def test_decompression_bomb_is_refused_from_the_header(side):
    with pytest.raises(errors.RequestError) as caught:
        decode_image(decompression_bomb_png(side, side), MAX_PIXELS, SIZE)
    assert caught.value.code == 413 and caught.value.kind == "ImageTooLarge"


def test_pixel_cap_comes_from_the_argument():
    image_bytes = encode(garment(100, 100), "PNG")
    decode_image(image_bytes, 10_000, SIZE)
    with pytest.raises(errors.RequestError) as caught:
        decode_image(image_bytes, 9_999, SIZE)
    assert caught.value.code == 413 and "10,000" in caught.value.message


def _modes():
    item = garment(60, 60)
    values = np.asarray(item)
    return {
        "cmyk-jpeg": encode(item.convert("CMYK"), "JPEG"),
        "1-bit-png": encode(item.convert("1"), "PNG"),
        "la-png": encode(item.convert("LA"), "PNG"),
        "16-bit-tiff": encode(Image.fromarray(values.astype(np.uint16) * 257), "TIFF"),
        "float-tiff": encode(Image.fromarray(values.astype(np.float32) / 255), "TIFF"),
        "lossy-webp": encode(item.convert("RGB"), "WEBP"),
        "rgba-webp": encode(item.convert("RGBA"), "WEBP"),
        "palette-gif": encode(item.convert("P"), "GIF"),
    }


@pytest.mark.parametrize("name", list(_modes()))
def test_other_pixel_modes_end_light_on_black(name):
    pixels = prepare_image(_modes()[name], SIZE, "auto", MAX_PIXELS)
    centre, corner = centre_and_corner(pixels)
    assert centre > 180 and corner < 40

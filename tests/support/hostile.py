"""A corpus of malformed and hostile requests, each with the 4xx it must get (the e2e
error tests and `python -m benchmarks.reliability` send it)."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib

from PIL import Image

# Oversized request lines and headers: Netty answers 400 and closes the connection while the
# rest of the request is still arriving, so the client may get a reset instead of the 400.
RESET_ALLOWED = ("header of 64 KiB", "URL of 64 KiB")
# Corpus cases TorchServe 0.12's Java frontend answers before the handler runs, so neither
# the handler nor config.properties can change them: reported, not failed.
KNOWN_UPSTREAM = {
    "binary body sent as a urlencoded form": "the frontend's form decoder throws "
    "ErrorDataDecoderException on non-form bytes and answers 500 (send a Content-Type)",
    "body over max_request_size": "Netty's aggregator answers 413 with an empty body, "
    "not TorchServe's JSON error",
}
KNOWN_UPSTREAM_BY_RUNTIME = {"torchserve": KNOWN_UPSTREAM, "kserve": {}}
# Cases a runtime answers otherwise by design (docs/api.md, "Where the servers differ"), with
# the status expected there; a 200 must carry the reference answer.
EXPECTED_ON_RUNTIME = {
    "kserve": {
        "binary body sent as a urlencoded form": 200,  # the body is taken as sent
        # the request line and headers over 16 KiB: 431 with the JSON error (Netty: 400)
        "header of 64 KiB": 431,
        "URL of 64 KiB": 431,
    },
}


def png_bomb(width: int, height: int | None = None) -> bytes:
    """A small PNG whose header claims width x height (default square) 8-bit grayscale pixels:
    a decompression bomb. Only 16 rows of data follow; a server that trusts the header and
    decodes would need width * height bytes of memory, so the header alone must get it refused.
    """
    height = width if height is None else height

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def gif_bomb(side: int) -> bytes:
    """A 1x1 GIF whose logical screen claims side x side pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def bad_requests(image: bytes, max_request_size: int) -> list[tuple]:
    """(name, method, path suffix, body, headers, expected status) for each hostile request.

    Paths are relative to the inference address; {p} is /predictions/<model>, {e} the
    explanations endpoint, {v2} the Open Inference Protocol's /v2/models/<model>/infer."""
    octet = {"Content-Type": "application/octet-stream"}
    as_json = {"Content-Type": "application/json"}
    b64 = base64.b64encode(image).decode()
    text = {"Content-Type": "text/plain"}
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, format="JPEG")
    boundary = "reliabilityboundary"
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}

    def with_image(**options) -> bytes:  # options travel in the JSON body: TorchServe 0.12
        return json.dumps({"data": b64, **options}).encode()  # drops /predictions' query

    text_b64 = json.dumps({"data": base64.b64encode(b"hi").decode()}).encode()
    too_many_instances = json.dumps({"instances": [{"data": b64}] * 17}).encode()

    def v2_body(datatype: str, data: list) -> bytes:
        tensor = {"name": "images", "datatype": datatype, "shape": [len(data)], "data": data}
        return json.dumps({"inputs": [tensor]}).encode()

    def binary_v2(header_length: str) -> dict:  # the binary-data extension's length header
        return {**as_json, "Inference-Header-Content-Length": header_length}

    lab = io.BytesIO()  # a colour space Pillow opens but cannot turn gray
    Image.new("LAB", (32, 32)).save(lab, format="TIFF")
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    too_big = b"\0" * (max_request_size + 1024)
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="x.png"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nnot an image at all\r\n--{boundary}--\r\n"
    ).encode()
    return [
        ("empty body", "POST", "{p}", b"", octet, 400),
        ("random bytes", "POST", "{p}", os.urandom(2048), octet, 400),
        ("text instead of image", "POST", "{p}", b"hello, model", text, 400),
        ("truncated PNG", "POST", "{p}", image[: len(image) // 2], octet, 400),
        ("PNG signature only", "POST", "{p}", image[:8], octet, 400),
        ("truncated JPEG", "POST", "{p}", jpeg.getvalue()[:300], octet, 400),
        ("PNG decompression bomb 100k x 100k", "POST", "{p}", png_bomb(100_000), octet, 413),
        ("PNG 7000 x 7000 header (49 MP)", "POST", "{p}", png_bomb(7000), octet, 413),
        ("GIF header 65535 x 65535", "POST", "{p}", gif_bomb(65535), octet, 413),
        ("zero-size PNG header", "POST", "{p}", png_bomb(0), octet, 400),
        ("body over max_request_size", "POST", "{p}", too_big, octet, 413),
        ("invalid JSON", "POST", "{p}", b'{"data": ', as_json, 400),
        ("JSON without image", "POST", "{p}", b'{"image": "x"}', as_json, 400),
        ("JSON data not base64", "POST", "{p}", b'{"data": "%%%not base64%%%"}', as_json, 400),
        ("JSON data a number", "POST", "{p}", b'{"data": 12345}', as_json, 400),
        ("JSON top-level list", "POST", "{p}", b'[1, 2, 3]', as_json, 400),
        ("JSON nested 5,000 deep", "POST", "{p}", b'{"data": ' * 5000, as_json, 400),
        ("5,000 '[' as a body", "POST", "{p}", b"[" * 5000, octet, 400),
        ("JSON base64 of text", "POST", "{p}", text_b64, as_json, 400),
        ("KServe v1 empty instances", "POST", "{p}", b'{"instances": []}', as_json, 400),
        ("KServe v1 17 instances", "POST", "{p}", too_many_instances, as_json, 422),
        ("v2 input FP32, not BYTES", "POST", "{v2}", v2_body("FP32", [1.0]), as_json, 400),
        ("v2 image 1 not an image", "POST", "{v2}", v2_body("BYTES", [b64, "aGk="]), as_json, 400),
        ("v2 17 images", "POST", "{v2}", v2_body("BYTES", [b64] * 17), as_json, 422),
        ("data URL of garbage", "POST", "{p}", b"data:image/png;base64,AAAAAAAA", octet, 400),
        ("multipart with a non-image file", "POST", "{p}", multipart, form, 400),
        ("topk 0", "POST", "{p}", with_image(topk=0), as_json, 422),
        ("topk 11", "POST", "{p}", with_image(topk=11), as_json, 422),
        ("topk 'abc'", "POST", "{p}", with_image(topk="abc"), as_json, 400),
        ("topk of 5,000 digits", "POST", "{p}", with_image(topk="1" * 5000), as_json, 422),
        ("target of 5,000 digits", "POST", "{e}", with_image(target="9" * 5000), as_json, 422),
        ("invert 'maybe'", "POST", "{p}", with_image(invert="maybe"), as_json, 400),
        ("explain target 'Unicorn'", "POST", "{e}", with_image(target="Unicorn"), as_json, 422),
        ("explain target 99", "POST", "{e}", with_image(target=99), as_json, 422),
        ("explain steps 100000", "POST", "{e}", with_image(steps=100000), as_json, 422),
        ("explain steps -1", "POST", "{e}", with_image(steps=-1), as_json, 422),
        ("header X-Topk: 0", "POST", "{p}", image, {**octet, "X-Topk": "0"}, 422),
        ("X-Topk of 5,000 digits", "POST", "{p}", image, {**octet, "X-Topk": "7" * 5000}, 422),
        ("TIFF in the LAB colour space", "POST", "{p}", lab.getvalue(), octet, 400),
        ("v2 binary header length '²'", "POST", "{v2}", b"{}", binary_v2("²"), 400),
        ("v2 binary header nested 5,000 deep", "POST", "{v2}", b"[" * 5000, binary_v2("5000"), 400),
        ("header X-Steps: many, explain", "POST", "{e}", image, {**octet, "X-Steps": "many"}, 400),
        ("binary body sent as a urlencoded form", "POST", "{p}", image, urlencoded, 400),
        ("unknown model", "POST", "/predictions/no-such-model", image, octet, 404),
        ("unknown model version", "POST", "{p}/99.9", image, octet, 404),
        ("header of 64 KiB", "POST", "{p}", image, {**octet, "X-Junk": "a" * 65536}, 400),
        ("URL of 64 KiB", "POST", "{p}?q=" + "a" * 65536, image, octet, 400),
    ]  # fmt: skip

"""One TorchServe request (a dict of named inputs) -> image bytes and per-request options.

How TorchServe 0.12 hands a request to the handler (frontend InferenceRequestHandler
.parseRequest, worker otf_message_handler._retrieve_input_data):
- the query string of /predictions and /explanations is dropped by the frontend (checked
  with an echo handler), so options travel as headers (`X-Topk: 3`, `X-Target: Trouser`),
  form fields or JSON fields;
- a raw body becomes "body": bytes, or a dict when Content-Type is application/json, or a
  str when it is text/*;
- a multipart or urlencoded form becomes one entry per field, under the field's name: file
  parts as bytes, text parts as str.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

import fashion_errors as errors
from fashion_image import INVERT_MODES, ImageFacts

OPTION_KEYS = ("topk", "target", "invert", "steps")
HEADER_PREFIX = "x-"  # X-Topk, X-Target, X-Invert, X-Steps: options for a raw-bytes upload
IMAGE_KEYS = ("data", "b64")  # where a JSON body or KServe v1 instance carries base64
ACCEPTED_BODIES = (
    'raw image bytes, a multipart upload, JSON {"data": "<base64>"} or '
    'KServe v1 {"instances": [{"data": "<base64>"}]}'
)

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\t]+")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class RequestOptions:
    topk: int
    target: int | None  # class index to explain; None means the predicted class
    invert: str  # "auto", "true" or "false"
    steps: int  # integrated-gradients steps


@dataclass
class PreparedBatch:
    """The good requests of a batch (in batch order) and the refused ones by batch index."""

    indices: list[int] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8 each
    options: list[RequestOptions] = field(default_factory=list)
    refused: dict[int, errors.RequestError] = field(default_factory=dict)
    facts: list[ImageFacts] = field(default_factory=list)  # per image, for the input metrics


@dataclass(frozen=True)
class OptionLimits:
    default_topk: int
    default_steps: int
    max_steps: int


def options_from_headers(headers: Mapping) -> dict:
    """The X-Topk / X-Target / X-Invert / X-Steps headers of a request, by option name."""
    wanted = {HEADER_PREFIX + key: key for key in OPTION_KEYS}
    return {
        wanted[name.lower()]: value
        for name, value in headers.items()
        if isinstance(name, str) and name.lower() in wanted
    }


def parse_request(
    request: Mapping,
    class_names: Sequence[str],
    limits: OptionLimits,
    max_image_bytes: int,
    header_options: Mapping | None = None,
) -> tuple[bytes, RequestOptions]:
    """The image bytes and options of one request; raises RequestError if either is bad.

    header_options (from options_from_headers) override options given in the body.
    """
    payload = _find_payload(request)
    json_body: Mapping = {}
    if isinstance(payload, (bytes, bytearray)) and payload[:64].lstrip()[:1] == b"{":
        # JSON sent with another Content-Type (or left undecoded by TS_DECODE_INPUT_REQUEST).
        payload = _load_json(payload)
    elif isinstance(payload, str) and payload[:64].lstrip()[:1] == "{":
        payload = _load_json(payload)

    if isinstance(payload, Mapping):
        json_body = payload
        image_bytes = _image_from_json(payload, max_image_bytes)
    elif isinstance(payload, str):
        image_bytes = decode_base64(payload, max_image_bytes)
    elif isinstance(payload, (bytes, bytearray)):
        if _DATA_URL.match(payload[:210].decode("latin-1")):
            image_bytes = decode_base64(payload.decode("latin-1"), max_image_bytes)
        else:
            image_bytes = bytes(payload) if isinstance(payload, bytearray) else payload
    else:
        raise errors.invalid_json(
            f"The body is a JSON {type(payload).__name__}; send {ACCEPTED_BODIES}."
        )

    if not image_bytes:
        raise errors.empty_request(f"The request body is empty; send {ACCEPTED_BODIES}.")
    if len(image_bytes) > max_image_bytes:
        raise errors.payload_too_large(
            f"The image is {len(image_bytes):,} bytes; at most {max_image_bytes:,} are accepted."
        )
    # Options from the JSON body, then a KServe instance, then form fields, then headers:
    # later wins.
    raw_options = {key: json_body[key] for key in OPTION_KEYS if key in json_body}
    instances = json_body.get("instances")
    if isinstance(instances, list) and isinstance(instances[0], Mapping):
        raw_options.update({key: instances[0][key] for key in OPTION_KEYS if key in instances[0]})
    raw_options.update({key: request[key] for key in OPTION_KEYS if key in request})
    raw_options.update(header_options or {})
    return image_bytes, parse_options(raw_options, class_names, limits)


def _find_payload(request: Mapping):
    for key in ("body", "data"):
        if key in request and request[key] is not None:
            return request[key]
    # A multipart upload under any field name (`-F file=@shirt.png`): the first field that
    # is not an option.
    for key, value in request.items():
        if key not in OPTION_KEYS and value is not None:
            return value
    raise errors.empty_request(f"The request holds no image; send {ACCEPTED_BODIES}.")


def _load_json(text: bytes | bytearray | str):
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_json(
            f"The body starts like JSON but is not valid JSON: {exc}."
        ) from exc


def _image_from_json(body: Mapping, max_image_bytes: int) -> bytes:
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise errors.invalid_json(
                '"instances" must be a non-empty list of {"data": "<base64>"}.'
            )
        if len(instances) > 1:
            raise errors.too_many_instances(
                f'"instances" holds {len(instances)} images; send one per request '
                "(TorchServe batches concurrent requests itself)."
            )
        instance = instances[0]
        if isinstance(instance, str):
            return decode_base64(instance, max_image_bytes)
        if not isinstance(instance, Mapping):
            raise errors.invalid_json('Each instance must be {"data": "<base64>"} or {"b64": ...}.')
        body = instance
    for key in IMAGE_KEYS:
        if key in body:
            value = body[key]
            if isinstance(value, Mapping) and "b64" in value:  # TF-serving style {"b64": ...}
                value = value["b64"]
            if not isinstance(value, str):
                raise errors.invalid_json(
                    f'"{key}" must be a base64 string, not {type(value).__name__}.'
                )
            return decode_base64(value, max_image_bytes)
    raise errors.invalid_json(
        f"The JSON body has keys {sorted(body)[:10]} but no image; send {ACCEPTED_BODIES}."
    )


def decode_base64(text: str, max_image_bytes: int) -> bytes:
    """Standard or URL-safe base64, padding optional, an optional data: URL prefix."""
    text = _DATA_URL.sub("", text.strip("\r\n\t"), count=1)
    # Refuse before decoding: base64 is 4 characters for every 3 bytes.
    if len(text) * 3 // 4 > max_image_bytes + 3:
        raise errors.payload_too_large(
            f"The base64 image is about {len(text) * 3 // 4:,} bytes; "
            f"at most {max_image_bytes:,} are accepted."
        )
    # A urlencoded form (`curl -d data=...`) turns "+" into " "; base64 has no spaces, so
    # put them back. Line breaks (MIME-wrapped base64) are dropped.
    text = _LINE_BREAKS.sub("", text.replace(" ", "+"))
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.invalid_base64(
            f"The image is not valid base64 ({exc}); send the file's bytes base64-encoded, "
            "optionally as a data: URL."
        ) from exc


def parse_options(raw: Mapping, class_names: Sequence[str], limits: OptionLimits) -> RequestOptions:
    """Validate topk, target, invert and steps given as headers, form or JSON fields."""
    num_classes = len(class_names)
    topk = _parse_int(raw, "topk", limits.default_topk, 1, num_classes)
    steps = _parse_int(raw, "steps", limits.default_steps, 1, limits.max_steps)
    target = parse_target(raw["target"], class_names) if "target" in raw else None

    invert = "auto"
    if "invert" in raw:
        value = _as_text(raw["invert"]).strip().lower()
        if value in _TRUE:
            invert = "true"
        elif value in _FALSE:
            invert = "false"
        elif value in INVERT_MODES:
            invert = value
        else:
            raise errors.invalid_parameter(
                f"invert={value!r} is not understood; use true, false or auto."
            )
    return RequestOptions(topk=topk, target=target, invert=invert, steps=steps)


def parse_target(value, class_names: Sequence[str]) -> int:
    """A class index (0-based) or a class name (case-insensitive) -> the class index."""
    text = _as_text(value).strip()
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if 0 <= index < len(class_names):
            return index
        raise errors.unknown_target(
            f"target={index} is out of range; use 0..{len(class_names) - 1} or a class name: "
            f"{', '.join(class_names)}."
        )
    folded = [name.casefold() for name in class_names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    raise errors.unknown_target(
        f"target={text!r} is not a class; use an index 0..{len(class_names) - 1} "
        f"or one of: {', '.join(class_names)}."
    )


def _parse_int(raw: Mapping, key: str, default: int, low: int, high: int) -> int:
    if key not in raw:
        return default
    value = raw[key]
    text = _as_text(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text):
        raise errors.invalid_parameter(f"{key}={text!r} is not a whole number; use {low}..{high}.")
    number = int(text)
    if not low <= number <= high:
        raise errors.parameter_out_of_range(f"{key}={number} is out of range; use {low}..{high}.")
    return number


def _as_text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and len(value) == 1:  # a JSON field sent as a one-item list
        return _as_text(value[0])
    return str(value)

"""One TorchServe request (a dict of named inputs) -> its images and per-request options.

A request holds one image (raw bytes, multipart, JSON `data`) or several: a JSON `data`
list, KServe v1 `instances`, an Open Inference Protocol (KServe v2) BYTES tensor
(fashion_serve.oip). Its images share its options and are predicted together.

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
from dataclasses import dataclass, field, replace

import numpy as np

from fashion_serve import errors, oip
from fashion_serve.image import ImageFacts
from fashion_serve.options import (
    OPTION_KEYS,
    OptionLimits,
    RequestOptions,
    parse_options,
)

HEADER_PREFIX = "x-"  # X-Topk, X-Target, X-Method, ...: options for a raw-bytes upload
IMAGE_KEYS = ("data", "b64")  # where a JSON body or KServe v1 instance carries base64
ACCEPTED_BODIES = (
    'raw image bytes, a multipart upload, JSON {"data": "<base64>"} (or a list of them), '
    'KServe v1 {"instances": [{"data": "<base64>"}, ...]} or an Open Inference Protocol '
    "request with a BYTES input"
)
# How a request's answer is shaped (see ParsedRequest.form).
SINGLE = "single"  # one image: the answer object itself, as always
LIST = "list"  # JSON {"data": [...]}: a list of answer objects, one per image
KSERVE_V1 = "kserve_v1"  # several KServe v1 instances: {"predictions": [...]}
OIP = "oip"  # an Open Inference Protocol response (fashion_serve.oip)

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\t]+")


@dataclass(frozen=True)
class ParsedRequest:
    """One request's encoded images (in order), its options, and how to shape its answer."""

    images: list[bytes]
    options: RequestOptions
    form: str = SINGLE  # SINGLE, LIST, KSERVE_V1 or OIP
    oip: oip.OipRequest | None = None  # the protocol fields (id, outputs) when form is OIP


@dataclass
class PreparedBatch:
    """The images of a batch's good requests, one row each in batch order (a request's rows
    are adjacent), and the refused requests by batch index."""

    indices: list[int] = field(default_factory=list)  # the request each row came from
    pixels: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8 each
    options: list[RequestOptions] = field(default_factory=list)
    refused: dict[int, errors.RequestError] = field(default_factory=dict)
    facts: list[ImageFacts] = field(default_factory=list)  # per image, for the input metrics
    requests: dict[int, ParsedRequest] = field(default_factory=dict)  # by batch index

    def rows_by_request(self) -> dict[int, list[int]]:
        rows: dict[int, list[int]] = {}
        for row, idx in enumerate(self.indices):
            rows.setdefault(idx, []).append(row)
        return rows


def options_from_headers(headers: Mapping) -> dict:
    """The X-Topk, X-Target, X-Invert, X-Steps, X-Delta-Tolerance, X-Method, X-Sign and
    X-Heatmap headers, by option name."""
    wanted = {HEADER_PREFIX + key.replace("_", "-"): key for key in OPTION_KEYS}
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
    binary_header_length: int | None = None,
) -> ParsedRequest:
    """The images and options of one request; raises RequestError if either is bad (an
    image's error names its index when the request holds several).

    header_options (from options_from_headers) override options given in the body.
    binary_header_length (Inference-Header-Content-Length) marks an OIP request in the
    binary-data extension.
    """
    payload = _find_payload(request)
    json_body: Mapping = {}
    if isinstance(payload, (bytes, bytearray)) and binary_header_length is not None:
        payload = oip.parse_binary_request(bytes(payload), binary_header_length, limits.max_images)
    elif isinstance(payload, (bytes, bytearray)) and payload[:64].lstrip()[:1] == b"{":
        # JSON sent with another Content-Type (or left undecoded by TS_DECODE_INPUT_REQUEST).
        payload = _load_json(payload)
    elif isinstance(payload, str) and payload[:64].lstrip()[:1] == "{":
        payload = _load_json(payload)

    form, protocol = SINGLE, None
    if oip.is_infer_request(payload):
        payload = oip.parse_infer_request(payload, limits.max_images)
    if isinstance(payload, oip.OipRequest):
        form, protocol = OIP, payload
        encoded = payload.images
    elif isinstance(payload, Mapping):
        json_body = payload
        form, encoded = _images_from_json(payload, limits.max_images)
    elif isinstance(payload, str):
        encoded = [payload]
    elif isinstance(payload, (bytes, bytearray)):
        if _DATA_URL.match(payload[:210].decode("latin-1")):
            encoded = [payload.decode("latin-1")]
        else:
            encoded = [bytes(payload)]
    else:
        raise errors.invalid_json(
            f"The body is a JSON {type(payload).__name__}; send {ACCEPTED_BODIES}."
        )

    images = []
    for index, item in enumerate(encoded):
        try:
            images.append(_checked_image(item, max_image_bytes))
        except errors.RequestError as error:
            raise error.for_image(index, len(encoded)) if len(encoded) > 1 else error from None

    # Options from the JSON body, then a KServe instance (the first), the OIP parameters,
    # then form fields, then headers: later wins.
    raw_options = {key: json_body[key] for key in OPTION_KEYS if key in json_body}
    instances = json_body.get("instances")
    if isinstance(instances, list) and isinstance(instances[0], Mapping):
        raw_options.update({key: instances[0][key] for key in OPTION_KEYS if key in instances[0]})
    if protocol is not None:
        raw_options.update(protocol.options)
    raw_options.update({key: request[key] for key in OPTION_KEYS if key in request})
    raw_options.update(header_options or {})
    options = parse_options(raw_options, class_names, limits)
    if protocol is not None and protocol.outputs is not None:
        # The outputs an OIP request names decide: a heatmap only if it is one of them.
        options = replace(options, heatmap=oip.HEATMAP_OUTPUT in protocol.outputs)
    return ParsedRequest(images, options, form, protocol)


def is_oip_request(request: Mapping, headers: Mapping) -> bool:
    """Whether a refused request came as an Open Inference Protocol one, so that its
    error takes that protocol's shape. Only for errors: it parses the body again."""
    if any(isinstance(k, str) and k.lower() == oip.BINARY_HEADER for k in headers):
        return True
    try:
        payload = _find_payload(request)
        if isinstance(payload, (bytes, bytearray, str)):
            payload = json.loads(payload)
    except (errors.RequestError, ValueError, RecursionError):
        return False
    return oip.is_infer_request(payload)


def shape_answer(parsed: ParsedRequest, answers: list[dict], explain: bool):
    """A request's answer from its images' answers (not for OIP: see fashion_serve.oip)."""
    if parsed.form == SINGLE:
        return answers[0]
    if parsed.form == KSERVE_V1:
        return {"explanations" if explain else "predictions": answers}
    return answers


def _checked_image(item: str | bytes, max_image_bytes: int) -> bytes:
    image_bytes = decode_base64(item, max_image_bytes) if isinstance(item, str) else item
    if not image_bytes:
        raise errors.empty_request(f"The request body is empty; send {ACCEPTED_BODIES}.")
    if len(image_bytes) > max_image_bytes:
        raise errors.payload_too_large(
            f"The image is {len(image_bytes):,} bytes; at most {max_image_bytes:,} are accepted."
        )
    return image_bytes


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
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
        raise errors.invalid_json(
            f"The body starts like JSON but is not valid JSON: {exc}."
        ) from exc
    except RecursionError as exc:
        raise errors.invalid_json("The JSON body is nested too deeply.") from exc


def _images_from_json(body: Mapping, max_images: int) -> tuple[str, list[str]]:
    """(answer form, base64 images) of a JSON body: {"data": ...} or KServe v1 instances."""
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise errors.invalid_json(
                '"instances" must be a non-empty list of {"data": "<base64>"}.'
            )
        _check_count(len(instances), max_images, '"instances"')
        images = []
        for index, instance in enumerate(instances):
            try:
                images.append(_instance_image(instance))
            except errors.RequestError as error:
                if len(instances) > 1:
                    raise error.for_image(index, len(instances)) from None
                raise
        return (SINGLE if len(images) == 1 else KSERVE_V1), images
    for key in IMAGE_KEYS:
        if key in body:
            value = body[key]
            if isinstance(value, list):
                if not value:
                    raise errors.invalid_json(f'"{key}" is an empty list; send base64 images.')
                _check_count(len(value), max_images, f'"{key}"')
                images = []
                for index, item in enumerate(value):
                    try:
                        images.append(_base64_value(item, key))
                    except errors.RequestError as error:
                        raise error.for_image(index, len(value)) from None
                return LIST, images
            return SINGLE, [_base64_value(value, key)]
    raise errors.invalid_json(
        f"The JSON body has keys {sorted(body)[:10]} but no image; send {ACCEPTED_BODIES}."
    )


def _check_count(count: int, max_images: int, where: str) -> None:
    if count > max_images:
        raise errors.too_many_instances(
            f"{where} holds {count} images; at most {max_images} are accepted per request."
        )


def _instance_image(instance) -> str:
    if isinstance(instance, str):
        return instance
    if not isinstance(instance, Mapping):
        raise errors.invalid_json('Each instance must be {"data": "<base64>"} or {"b64": ...}.')
    for key in IMAGE_KEYS:
        if key in instance:
            return _base64_value(instance[key], key)
    raise errors.invalid_json(
        f'The instance has keys {sorted(instance)[:10]} but no image; send {{"data": "<base64>"}}.'
    )


def _base64_value(value, key: str) -> str:
    if isinstance(value, Mapping) and "b64" in value:  # TF-serving style {"b64": ...}
        value = value["b64"]
    if not isinstance(value, str):
        raise errors.invalid_json(f'"{key}" must be a base64 string, not {type(value).__name__}.')
    return value


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

"""Open Inference Protocol (KServe v2) bodies in and out: pure functions, no TorchServe.

TorchServe 0.12 routes POST /v2/models/{m}/infer and /v2/models/{m}/explain to the handler
with the body as-is when no service envelope is set (the `explain: True` header marks the
second). The stock `kservev2` envelope reads only request 0 of a batch, so this module
stands in for it and each request of a batch gets its own response.

Request: one BYTES input, shape [N] (or [N, 1]), one encoded image per element: base64
text in JSON, as OIP clients send BYTES in JSON, or the image bytes themselves with the
binary-data extension (tritonclient's default: a JSON header of `Inference-Header-Content-Length`
bytes, then each element as a 4-byte little-endian length and its bytes), or bytes as gRPC
carries them (the kserve runtime). Options (topk, target, invert, steps, delta_tolerance,
method, sign, heatmap) as `parameters` of the request or of the input (the input's win).

Response outputs (data flattened row-major, as the protocol has it):
    prediction    probabilities FP32 [N, C]; classes BYTES [N, k] (top-k names, highest first)
    explanation   method BYTES [N]; attributions FP32 [N, H, W]; target INT64 [N];
                  target_name BYTES [N]; target_probability FP32 [N]; delta FP32 [N]
                  and steps INT32 [N] (integrated gradients only); converged BOOL [N]
                  (steps "auto" only); heatmap_png BYTES [N] (base64)
Errors: {"error": "<message>"} with the HTTP status the other routes give.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fashion_serve import errors
from fashion_serve.options import OPTION_KEYS

INPUT_NAME = "images"
PREDICTION_OUTPUTS = ("probabilities", "classes")
HEATMAP_OUTPUT = "heatmap_png"
EXPLANATION_OUTPUTS = (
    "method",
    "attributions",
    "target",
    "target_name",
    "target_probability",
    "delta",
    "steps",
    "converged",
    HEATMAP_OUTPUT,
)
BINARY_HEADER = "inference-header-content-length"
ACCEPTED = (
    f'{{"inputs": [{{"name": "{INPUT_NAME}", "datatype": "BYTES", "shape": [N], '
    '"data": ["<base64 image>", ...]}]}'
)


@dataclass(frozen=True)
class OipRequest:
    """One parsed inference request: what the handler needs, still undecoded."""

    id: str | None
    images: list[str | bytes]  # base64 text (JSON) or image bytes (binary extension)
    options: dict  # raw option values by name, input parameters over request parameters
    outputs: tuple[str, ...] | None  # the outputs asked for by name; None: all


def is_infer_request(payload) -> bool:
    """A JSON object with "inputs": what an OIP client sends."""
    return isinstance(payload, Mapping) and "inputs" in payload


def binary_header_length(headers: Mapping) -> int | None:
    """The JSON part's length from `Inference-Header-Content-Length`, None without it."""
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == BINARY_HEADER:
            if isinstance(value, bytes | bytearray):
                value = value.decode("utf-8", "replace")
            text = str(value).strip()
            if not re.fullmatch(r"[0-9]{1,12}", text):  # more digits than any body could have
                raise errors.invalid_json(
                    f"Inference-Header-Content-Length: {errors.shown(text)!r} is not a byte "
                    "count; it gives the JSON header's length."
                )
            return int(text)
    return None


def parse_binary_request(body: bytes, header_length: int, max_images: int) -> OipRequest:
    """A request in the binary-data extension: a JSON header, then the tensors' bytes."""
    if header_length > len(body):
        raise errors.invalid_json(
            f"Inference-Header-Content-Length is {header_length:,} but the body has "
            f"{len(body):,} bytes."
        )
    try:
        header = json.loads(body[:header_length])
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
        raise errors.invalid_json(f"The inference header is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise errors.invalid_json("The inference header is nested too deeply.") from exc
    return parse_infer_request(header, max_images, memoryview(body)[header_length:])


def parse_infer_request(
    body: Mapping, max_images: int, binary: memoryview | bytes | None = None
) -> OipRequest:
    """The images, options, id and requested outputs of an OIP inference request body."""
    if not is_infer_request(body):
        raise errors.invalid_json(f"An inference request needs inputs; send {ACCEPTED}.")
    inputs = body["inputs"]
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, Mapping) for i in inputs)):
        raise errors.invalid_json(f'"inputs" must be a non-empty list of tensors; send {ACCEPTED}.')
    tensor = _image_input(inputs)
    name = tensor.get("name", INPUT_NAME)
    if tensor.get("datatype") != "BYTES":
        raise errors.invalid_json(
            f"Input {name!r} has datatype {tensor.get('datatype')!r}; send encoded images as BYTES."
        )
    count = _element_count(tensor.get("shape"), name)
    if count > max_images:
        raise errors.too_many_instances(
            f"Input {name!r} holds {count} images; at most {max_images} are accepted per request."
        )
    if count == 0:
        raise errors.empty_request(f"Input {name!r} holds no image; shape [N] needs N >= 1.")
    images = _tensor_images(tensor, name, binary)
    if len(images) != count:
        raise errors.invalid_json(
            f"Input {name!r} has shape {tensor.get('shape')} but {len(images)} elements."
        )

    options = _options(body.get("parameters"), "the request")
    options.update(_options(tensor.get("parameters"), f"input {name!r}"))
    request_id = body.get("id")
    return OipRequest(
        id=str(request_id) if request_id is not None else None,
        images=images,
        options=options,
        outputs=_requested_outputs(body.get("outputs")),
    )


def _image_input(inputs: list[Mapping]) -> Mapping:
    """The one input (named `images` by convention; any name is taken when it is alone)."""
    if len(inputs) > 1:
        names = [i.get("name") for i in inputs]
        raise errors.invalid_json(
            f"The request has inputs {names}; send one BYTES input named {INPUT_NAME!r}."
        )
    return inputs[0]


def _element_count(shape, name: str) -> int:
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise errors.invalid_json(
            f"Input {name!r} has shape {shape!r}; send [N] (or [N, 1]), one image per element."
        )
    return shape[0]


def _tensor_images(tensor: Mapping, name: str, binary) -> list[str | bytes]:
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, Mapping) else None
    if size is not None:
        if binary is None or not isinstance(size, int) or size > len(binary):
            raise errors.invalid_json(
                f"Input {name!r} gives binary_data_size {size!r}, which the body does not hold."
            )
        return bytes_elements(bytes(binary[:size]), name)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise errors.invalid_json(f'Input {name!r} needs "data": a list of base64 strings.')
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    for index, item in enumerate(flat):
        # bytes come only from a binary transport (gRPC's BYTES contents): JSON has none.
        if not isinstance(item, str | bytes):
            raise errors.invalid_json(
                f"Element {index} of input {name!r} is a {type(item).__name__}; "
                "send each image as a base64 string."
            )
    return flat


def bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """BYTES tensor in the binary extension: each element a uint32 LE length, then bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise errors.invalid_json(f"Input {name!r}: binary data ends inside a length.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise errors.invalid_json(f"Input {name!r}: binary data ends inside element.")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _options(parameters, where: str) -> dict:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise errors.invalid_json(f'"parameters" of {where} must be an object.')
    return {key: parameters[key] for key in OPTION_KEYS if key in parameters}


def _requested_outputs(outputs) -> tuple[str, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, Mapping) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise errors.invalid_json('"outputs" must be a list of {"name": "<output name>"}.')
    return tuple(o["name"] for o in outputs) or None


# --- responses -------------------------------------------------------------------------------


def tensor(name: str, datatype: str, shape: Sequence[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def prediction_outputs(
    probability_rows: Sequence[Sequence[float]], top_classes: Sequence[Sequence[str]]
) -> list[dict]:
    """(N, C) probabilities and each row's top-k class names -> the two output tensors."""
    n, k = len(probability_rows), len(top_classes[0])
    return [
        tensor(
            "probabilities",
            "FP32",
            [n, len(probability_rows[0])],
            [p for row in probability_rows for p in row],
        ),
        tensor("classes", "BYTES", [n, k], [name for row in top_classes for name in row]),
    ]


def explanation_outputs(answers: Sequence[Mapping]) -> list[dict]:
    """The handler's explanation objects (one per image) -> the output tensors."""
    n = len(answers)
    height, width = len(answers[0]["attributions"]), len(answers[0]["attributions"][0])
    outputs = [
        tensor("method", "BYTES", [n], [a["method"] for a in answers]),
        tensor(
            "attributions",
            "FP32",
            [n, height, width],
            [v for a in answers for row in a["attributions"] for v in row],
        ),
        tensor("target", "INT64", [n], [a["target"] for a in answers]),
        tensor("target_name", "BYTES", [n], [a["target_name"] for a in answers]),
        tensor("target_probability", "FP32", [n], [a["probability"] for a in answers]),
    ]
    # Only integrated gradients has a convergence delta (one method per request).
    if all(a["delta"] is not None for a in answers):
        outputs.append(tensor("delta", "FP32", [n], [a["delta"] for a in answers]))
        outputs.append(tensor("steps", "INT32", [n], [a["steps"] for a in answers]))
    if all("converged" in a for a in answers):
        outputs.append(tensor("converged", "BOOL", [n], [a["converged"] for a in answers]))
    # No heatmap when the request's outputs leave it out, or it says heatmap=false.
    if all(a["heatmap_png"] is not None for a in answers):
        outputs.append(tensor(HEATMAP_OUTPUT, "BYTES", [n], [a["heatmap_png"] for a in answers]))
    return outputs


def infer_response(
    request: OipRequest,
    model_name: str,
    model_version: str,
    outputs: list[dict],
    parameters: Mapping | None = None,
) -> dict:
    """The response object, with only the outputs the request named (in its order).

    Raises RequestError (400) for a requested output this endpoint does not have.
    """
    if request.outputs is not None:
        by_name = {o["name"]: o for o in outputs}
        unknown = [name for name in request.outputs if name not in by_name]
        if unknown:
            raise errors.invalid_parameter(
                f"Unknown output {', '.join(repr(n) for n in unknown)}; this endpoint "
                f"answers {', '.join(by_name)}."
            )
        outputs = [by_name[name] for name in request.outputs]
    response = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = dict(parameters)
    response["outputs"] = outputs
    return response


def error_body(error: errors.RequestError) -> dict:
    """The protocol's error shape; the HTTP status carries the code."""
    return {"error": error.message}


def model_metadata(
    model_name: str,
    model_version: str,
    input_shape: Sequence[int],
    num_classes: int,
    max_images: int,
) -> dict:
    """GET /v2/models/{m}'s answer (which TorchServe 0.12 does not route to a handler; the
    management API's `?customized=true` shows it). -1 marks the variable dimensions."""
    height, width = input_shape[-2:]

    def meta(name, datatype, shape):
        return {"name": name, "datatype": datatype, "shape": shape}

    return {
        "name": model_name,
        "versions": [model_version],
        "platform": "pytorch_torchscript",
        "inputs": [meta(INPUT_NAME, "BYTES", [-1])],
        "outputs": [
            meta("probabilities", "FP32", [-1, num_classes]),
            meta("classes", "BYTES", [-1, -1]),
            meta("method", "BYTES", [-1]),
            meta("attributions", "FP32", [-1, height, width]),
            meta("target", "INT64", [-1]),
            meta("target_name", "BYTES", [-1]),
            meta("target_probability", "FP32", [-1]),
            meta("delta", "FP32", [-1]),
            meta("steps", "INT32", [-1]),
            meta("converged", "BOOL", [-1]),
            meta("heatmap_png", "BYTES", [-1]),
        ],
        "parameters": {
            "max_images_per_request": max_images,
            "prediction_outputs": list(PREDICTION_OUTPUTS),
            "explanation_outputs": list(EXPLANATION_OUTPUTS),
            "options": list(OPTION_KEYS),
        },
    }

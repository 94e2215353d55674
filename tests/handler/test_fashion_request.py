"""Request bodies and options as TorchServe 0.12 delivers them."""

from __future__ import annotations

import base64
import json

import pytest

from fashion_serve import errors
from fashion_serve.contract import FASHION_MNIST_CLASSES
from fashion_serve.options import OptionLimits, RequestOptions, parse_options
from fashion_serve.request import (
    KSERVE_V1,
    LIST,
    OIP,
    SINGLE,
    decode_base64,
    is_oip_request,
    options_from_headers,
    parse_request,
    shape_answer,
)
from tests.handler.helpers import png_bytes

LIMITS = OptionLimits(default_topk=5, default_steps=50, max_steps=200, max_images=16)
MAX_BYTES = 1_000_000
IMAGE = png_bytes()
B64 = base64.b64encode(IMAGE).decode("ascii")
DEFAULTS = RequestOptions(topk=5, target=None, invert="auto", steps=50)


def oip_body(data: list) -> dict:
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}]}


def parse(request: dict, header_options: dict | None = None):
    return parse_request(request, FASHION_MNIST_CLASSES, LIMITS, MAX_BYTES, header_options)


@pytest.mark.parametrize(
    "request_dict",
    [
        {"body": IMAGE},  # curl -T shirt.png, or --data-binary with octet-stream
        {"body": bytearray(IMAGE)},
        {"data": IMAGE},
        {"file": IMAGE},  # multipart -F file=@shirt.png
        {"image": IMAGE},  # multipart under another name: -F image=@shirt.png
        {"body": {"data": B64}},  # application/json, already parsed by TorchServe
        {"body": {"data": "data:image/png;base64," + B64}},
        {"body": {"data": {"b64": B64}}},
        {"body": {"instances": [{"data": B64}]}},  # KServe v1
        {"body": {"instances": [{"b64": B64}]}},
        {"body": {"instances": [B64]}},
        {"body": json.dumps({"data": B64}).encode()},  # JSON sent as octet-stream
        {"body": json.dumps({"data": B64})},  # JSON sent as text/plain
        {"data": B64},  # multipart text field holding base64
        {"body": ("data:image/png;base64," + B64).encode()},
    ],
    ids=lambda r: ",".join(f"{k}:{type(v).__name__}" for k, v in r.items()),
)
def test_every_body_form_yields_the_image(request_dict):
    parsed = parse(request_dict)
    assert parsed.images == [IMAGE] and parsed.form == SINGLE
    assert parsed.options == DEFAULTS


def test_an_image_under_any_name_beside_a_form_field():
    # -F image=@shirt.png -F topk=3: the image is the entry that is not an option.
    parsed = parse({"image": IMAGE, "topk": b"3"})
    assert parsed.images == [IMAGE]
    assert parsed.options == RequestOptions(topk=3, target=None, invert="auto", steps=50)


def test_form_fields_arrive_as_entries_and_are_parsed():
    # -F topk=3 -F target=Trouser ... -> one entry each beside the image.
    options = parse(
        {"body": IMAGE, "topk": b"3", "target": b"Trouser", "invert": b"true", "steps": b"20"}
    ).options
    assert options == RequestOptions(topk=3, target=1, invert="true", steps=20)


def test_json_fields_are_options_and_form_fields_win():
    options = parse({"body": {"data": B64, "topk": 2, "target": 7, "invert": False}}).options
    assert options == RequestOptions(topk=2, target=7, invert="false", steps=50)
    options = parse({"body": {"data": B64, "topk": 2}, "topk": b"4"}).options
    assert options.topk == 4
    kserve = {"instances": [{"data": B64, "target": "Bag", "topk": 3}], "topk": 1}
    options = parse({"body": kserve}).options
    assert (options.target, options.topk) == (8, 3)


def test_header_options_override_the_body():
    headers = {"X-Topk": "2", "x-target": "Bag", "X-Invert": "false", "Authorization": "Bearer k"}
    header_options = options_from_headers(headers)
    assert header_options == {"topk": "2", "target": "Bag", "invert": "false"}
    options = parse({"body": {"data": B64, "topk": 4}}, header_options=header_options).options
    assert options == RequestOptions(topk=2, target=8, invert="false", steps=50)
    with pytest.raises(errors.RequestError) as refused:
        parse({"body": IMAGE}, header_options=options_from_headers({"X-Steps": "0"}))
    assert refused.value.code == 422


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"target": "ankle boot"}, 9),
        ({"target": "T-shirt/top"}, 0),
        ({"target": b"3"}, 3),
        ({"target": 0}, 0),
    ],
)
def test_target_by_index_or_case_insensitive_name(raw, expected):
    assert parse_options(raw, FASHION_MNIST_CLASSES, LIMITS).target == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"true", "true"), (b"1", "true"), (b"FALSE", "false"), (b"no", "false"), (b"auto", "auto")],
)
def test_invert_values(value, expected):
    assert parse_options({"invert": value}, FASHION_MNIST_CLASSES, LIMITS).invert == expected


@pytest.mark.parametrize(
    ("raw", "code", "kind"),
    [
        ({"topk": b"three"}, 400, "InvalidParameter"),
        ({"topk": b"2.5"}, 400, "InvalidParameter"),
        ({"topk": True}, 400, "InvalidParameter"),
        ({"topk": b"0"}, 422, "ParameterOutOfRange"),
        ({"topk": b"11"}, 422, "ParameterOutOfRange"),
        ({"steps": b"0"}, 422, "ParameterOutOfRange"),
        ({"steps": b"201"}, 422, "ParameterOutOfRange"),
        ({"steps": b"many"}, 400, "InvalidParameter"),
        ({"target": b"Hat"}, 422, "UnknownTarget"),
        ({"target": b"10"}, 422, "UnknownTarget"),
        ({"target": b"-1"}, 422, "UnknownTarget"),
        ({"invert": b"maybe"}, 400, "InvalidParameter"),
        ({"steps": b"automatic"}, 400, "InvalidParameter"),
        ({"delta_tolerance": b"0"}, 400, "InvalidParameter"),
        ({"delta_tolerance": b"-0.1"}, 400, "InvalidParameter"),
        ({"delta_tolerance": b"nan"}, 400, "InvalidParameter"),
        ({"delta_tolerance": b"inf"}, 400, "InvalidParameter"),
        ({"delta_tolerance": b"small"}, 400, "InvalidParameter"),
        ({"delta_tolerance": True}, 400, "InvalidParameter"),
    ],
)
def test_bad_options_are_refused(raw, code, kind):
    with pytest.raises(errors.RequestError) as caught:
        parse_options(raw, FASHION_MNIST_CLASSES, LIMITS)
    assert (caught.value.code, caught.value.kind) == (code, kind)
    assert caught.value.message  # says what is accepted
    body = caught.value.to_body()
    assert body == {"code": code, "type": kind, "message": caught.value.message}


def test_steps_auto_and_its_tolerance_by_header_field_or_default():
    headers = options_from_headers({"X-Steps": "Auto", "X-Delta-Tolerance": "0.02"})
    options = parse_options(headers, FASHION_MNIST_CLASSES, LIMITS)
    assert (options.steps, options.delta_tolerance) == ("auto", 0.02)
    options = parse_options({"steps": "auto"}, FASHION_MNIST_CLASSES, LIMITS)
    assert options.delta_tolerance == LIMITS.default_tolerance
    auto_by_default = OptionLimits(default_topk=5, default_steps="auto", max_steps=200)
    assert parse_options({}, FASHION_MNIST_CLASSES, auto_by_default).steps == "auto"
    assert parse_options({"steps": 32}, FASHION_MNIST_CLASSES, auto_by_default).steps == 32


def test_unknown_target_message_lists_the_classes():
    with pytest.raises(errors.RequestError) as caught:
        parse_options({"target": b"Hat"}, FASHION_MNIST_CLASSES, LIMITS)
    assert "Ankle boot" in caught.value.message and "0..9" in caught.value.message


@pytest.mark.parametrize(
    ("request_dict", "code", "kind"),
    [
        ({"body": b""}, 400, "EmptyRequest"),
        ({}, 400, "EmptyRequest"),
        ({"topk": b"3"}, 400, "EmptyRequest"),  # only a form field (-F topk=3), no image
        ({"body": b"{not json"}, 400, "InvalidJSON"),
        ({"body": {"image": B64}}, 400, "InvalidJSON"),
        ({"body": {"data": 12}}, 400, "InvalidJSON"),
        ({"body": {"instances": []}}, 400, "InvalidJSON"),
        ({"body": {"instances": {"data": B64}}}, 400, "InvalidJSON"),
        ({"body": {"instances": [42]}}, 400, "InvalidJSON"),
        ({"body": [1, 2, 3]}, 400, "InvalidJSON"),
        ({"body": {"instances": [{"data": B64}] * 17}}, 422, "TooManyInstances"),
        ({"body": {"data": [B64] * 17}}, 422, "TooManyInstances"),
        ({"body": {"data": []}}, 400, "InvalidJSON"),
        ({"body": {"data": "not base64 at all!"}}, 400, "InvalidBase64"),
        ({"body": {"data": ""}}, 400, "EmptyRequest"),
        ({"body": b"\0" * (MAX_BYTES + 1)}, 413, "PayloadTooLarge"),
        ({"body": {"data": "A" * (MAX_BYTES * 2)}}, 413, "PayloadTooLarge"),
    ],
)
def test_bad_bodies_are_refused(request_dict, code, kind):
    with pytest.raises(errors.RequestError) as caught:
        parse(request_dict)
    assert (caught.value.code, caught.value.kind) == (code, kind)


def test_base64_variants():
    assert decode_base64(B64.rstrip("="), MAX_BYTES) == IMAGE  # padding dropped
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))  # MIME line breaks
    assert decode_base64(wrapped, MAX_BYTES) == IMAGE
    with_plus = base64.b64encode(b"\xfb\xef\xbe" * 10).decode()
    assert "+" in with_plus
    assert decode_base64(with_plus.replace("+", " "), MAX_BYTES) == b"\xfb\xef\xbe" * 10
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10).decode()
    assert decode_base64(urlsafe, MAX_BYTES) == b"\xfb\xff\xfe" * 10


@pytest.mark.parametrize(
    ("body", "form"),
    [
        ({"data": [B64, B64, B64]}, LIST),
        ({"instances": [{"data": B64}, {"b64": B64}, B64]}, KSERVE_V1),
        (
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": [B64] * 3}]},
            OIP,
        ),
    ],
    ids=["json-list", "kserve-v1", "oip"],
)
def test_several_images_in_one_request(body, form):
    parsed = parse({"body": body})
    assert parsed.images == [IMAGE] * 3 and parsed.form == form
    assert parse({"body": json.dumps(body).encode()}).images == [IMAGE] * 3  # no Content-Type


@pytest.mark.parametrize(
    "body",
    [
        {"data": [B64, "not base64!", B64]},
        {"instances": [{"data": B64}, {"data": "not base64!"}, {"data": B64}]},
        {"instances": [{"data": B64}, {"data": 7}, {"data": B64}]},
        {
            "inputs": [
                {"name": "images", "datatype": "BYTES", "shape": [3], "data": [B64, "#", B64]}
            ]
        },
    ],
    ids=["json-list", "kserve-v1", "kserve-v1-not-a-string", "oip"],
)
def test_a_bad_image_among_several_is_refused_by_its_index(body):
    with pytest.raises(errors.RequestError) as caught:
        parse({"body": body})
    assert caught.value.code == 400 and caught.value.index == 1
    assert caught.value.message.startswith("Image at index 1 (of 3): ")
    assert caught.value.to_body()["index"] == 1


def test_oip_parameters_are_options_and_headers_still_win():
    body = {
        "parameters": {"topk": 3, "target": "Bag", "binary_data_output": True},
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [1],
                "data": [B64],
                "parameters": {"topk": 2, "steps": 7},
            }
        ],
    }
    parsed = parse({"body": body})
    assert parsed.options == RequestOptions(topk=2, target=8, invert="auto", steps=7)
    assert parse({"body": body}, {"topk": "4"}).options.topk == 4


def test_shape_answer_by_form():
    answers = [{"Bag": 0.9}, {"Coat": 0.8}]
    parsed = parse({"body": {"instances": [B64, B64]}})
    assert shape_answer(parsed, answers, explain=False) == {"predictions": answers}
    assert shape_answer(parsed, answers, explain=True) == {"explanations": answers}
    assert shape_answer(parse({"body": {"data": [B64, B64]}}), answers, False) == answers
    assert shape_answer(parse({"body": IMAGE}), answers[:1], False) == answers[0]


def test_refused_oip_requests_are_recognized_for_their_error_shape():
    oip_body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert is_oip_request({"body": oip_body}, {})
    assert is_oip_request({"body": json.dumps(oip_body).encode()}, {})
    assert is_oip_request({"body": b"garbage"}, {"Inference-Header-Content-Length": "3"})
    assert not is_oip_request({"body": {"data": "x"}}, {})
    assert not is_oip_request({"body": b"\x89PNG"}, {})


def test_method_and_sign_options_with_aliases_headers_and_defaults():
    options = parse({"body": IMAGE}).options
    assert (options.method, options.sign) == ("integrated_gradients", "positive")
    options = parse({"body": {"data": B64, "method": "Input-X-Gradient", "sign": "all"}}).options
    assert (options.method, options.sign) == ("input_x_gradient", "all")
    headers = options_from_headers({"X-Method": "ig", "X-Sign": "ALL"})
    options = parse({"body": IMAGE, "method": b"occlusion"}, header_options=headers).options
    assert (options.method, options.sign) == ("integrated_gradients", "all")


@pytest.mark.parametrize(("key", "value"), [("method", "shap"), ("sign", "negative")])
def test_an_unknown_method_or_sign_is_refused_with_the_choices(key, value):
    with pytest.raises(errors.RequestError) as refused:
        parse({"body": {"data": B64, key: value}})
    assert refused.value.code == 400
    choices = {"method": "integrated_gradients, saliency", "sign": "positive, all"}
    assert repr(value) in refused.value.message and choices[key] in refused.value.message


@pytest.mark.parametrize(
    ("given", "heatmap"),
    [(None, True), ("false", False), ("Off", False), (False, False), ("1", True)],
)
def test_heatmap_option_from_a_json_field(given, heatmap):
    body = {"data": B64} | ({} if given is None else {"heatmap": given})
    assert parse({"body": body}).options.heatmap is heatmap


def test_heatmap_option_from_a_header_and_a_value_not_understood():
    headers = options_from_headers({"X-Heatmap": "false"})
    assert parse({"body": IMAGE}, header_options=headers).options.heatmap is False
    with pytest.raises(errors.RequestError) as refused:
        parse({"body": {"data": B64, "heatmap": "maybe"}})
    assert refused.value.code == 400 and "heatmap='maybe'" in refused.value.message


def test_an_oip_request_naming_its_outputs_gets_a_heatmap_only_if_it_names_one():
    def heatmap(**fields) -> bool:
        return parse({"body": oip_body([B64]) | fields}).options.heatmap

    assert heatmap() is True
    assert heatmap(outputs=[{"name": "attributions"}]) is False
    assert heatmap(outputs=[{"name": "attributions"}, {"name": "heatmap_png"}]) is True
    assert heatmap(parameters={"heatmap": False}) is False

"""The handler class end to end in-process: a real ts.context.Context, no server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_serve import service as fashion_service
from fashion_serve.contract import FASHION_MNIST_CLASSES
from fashion_serve.service import Request
from fashion_serve.settings import HandlerSettings
from fashion_serve.torchserve_runtime import TorchServeHandler, wants_explanation
from tests.handler.helpers import (
    encode,
    garment,
    handle_json,
    make_context,
    png_bytes,
    set_requests,
)

EXPLAIN = {"explain": "True"}


def run_batch(handler, context, requests: list[dict], headers: list[dict] | None = None):
    set_requests(context, headers or [{} for _ in requests])
    responses = handle_json(handler, requests, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    return responses, statuses


def test_settings_come_from_model_config_with_defaults():
    settings = HandlerSettings.from_model_yaml({"handler": {"topk": 3, "max_image_pixels": 100}})
    assert settings.topk == 3 and settings.max_image_pixels == 100
    assert settings.ig_steps == 50 and settings.torch_threads == 1
    assert HandlerSettings.from_model_yaml(None) == HandlerSettings()


def test_initialize_loads_the_contract_and_runs_on_cpu(handler_and_context):
    handler, _ = handler_and_context
    assert handler.service.contract.class_names == FASHION_MNIST_CLASSES
    assert handler.service.device == torch.device("cpu")
    assert handler.initialized


def test_initialize_sets_torch_threads_from_config(tiny_export_dir):
    # Not the default (1), so a handler that ignores the setting fails; the autouse
    # keep_torch_threads fixture puts the process's count back afterwards.
    torch.set_num_threads(1)
    context = make_context(tiny_export_dir, {"handler": {"torch_threads": 2}})
    TorchServeHandler().initialize(context)
    assert torch.get_num_threads() == 2


def test_requests_parse_on_a_fresh_handler(tiny_export_dir):
    """Only initialize() has run: parsing needs nothing but the requests it is handed."""
    context = make_context(tiny_export_dir)
    handler = TorchServeHandler()
    handler.initialize(context)
    prepared = handler.service.parse_requests(
        [Request({"body": png_bytes()}, {"X-Topk": "2"}), Request({"body": b"not an image"})]
    )
    assert prepared.indices == [0] and prepared.options[0].topk == 2
    assert prepared.refused[1].code == 400


def test_mixed_batch_gets_per_request_statuses_and_answers(handler_and_context):
    handler, context = handler_and_context
    requests = [
        {"body": png_bytes()},
        {"body": b"not an image"},
        {"body": {"data": base64.b64encode(png_bytes()).decode()}, "topk": b"2"},
        {"body": png_bytes(), "topk": b"99"},
        {"file": encode(garment(50, 30).convert("RGB"), "JPEG")},
        {"body": png_bytes(), "target": b"Hat"},
    ]
    responses, statuses = run_batch(handler, context, requests)
    assert statuses == [200, 400, 200, 422, 200, 422]
    assert context.get_response_status(1) == (400, "Bad Request")
    assert all(context.get_response_content_type(i) == "application/json" for i in range(6))
    # Answers and refusals alike name the version that made them (a rollout serves two).
    version = handler.service.contract.version
    assert all(context.get_response_headers(i)["X-Model-Version"] == version for i in range(6))

    assert len(responses[0]) == 5 and len(responses[2]) == 2 and len(responses[4]) == 5
    for answer in (responses[0], responses[2], responses[4]):
        assert set(answer) <= set(FASHION_MNIST_CLASSES)
        probabilities = list(answer.values())
        assert probabilities == sorted(probabilities, reverse=True)
    # The same image answers the same whatever else is in the batch.
    assert responses[2] == dict(list(responses[0].items())[:2])

    assert responses[1]["code"] == 400 and responses[1]["type"] == "InvalidImage"
    assert responses[3]["type"] == "ParameterOutOfRange" and "1..10" in responses[3]["message"]
    assert responses[5]["type"] == "UnknownTarget"
    # Every answer serializes the way TorchServe's create_predict_response does it.
    for response in responses:
        json.dumps(response, indent=2)


def test_predictions_match_the_model_run_directly(handler_and_context):
    handler, context = handler_and_context
    image = garment(28, 28)
    responses, _ = run_batch(handler, context, [{"body": encode(image, "PNG")}])
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(
        (pixels - handler.service.contract.mean[0]) / handler.service.contract.std[0]
    )
    with torch.no_grad():
        expected = torch.softmax(handler.service.model(x.view(1, 1, 28, 28)), dim=1)[0]
    best = int(expected.argmax())
    name, probability = next(iter(responses[0].items()))
    assert name == FASHION_MNIST_CLASSES[best]
    assert probability == pytest.approx(float(expected[best]), abs=1e-5)


def test_statuses_reset_between_batches(handler_and_context):
    handler, context = handler_and_context
    run_batch(handler, context, [{"body": b""}])
    _, statuses = run_batch(handler, context, [{"body": png_bytes()}])
    assert statuses == [200]


def test_explanations_use_each_requests_own_target(handler_and_context):
    handler, context = handler_and_context
    requests = [
        {"body": png_bytes(), "target": b"Trouser", "steps": b"4"},
        {"body": png_bytes(), "target": b"9", "steps": b"4"},
        {"body": png_bytes(), "steps": b"6"},  # no target: the predicted class
        {"body": png_bytes()},  # a prediction in the same batch
        {"body": png_bytes(), "steps": b"500"},
        {"body": png_bytes(), "steps": b"4"},  # target from an X-Target header
    ]
    headers = [EXPLAIN, EXPLAIN, EXPLAIN, {}, EXPLAIN, {**EXPLAIN, "X-Target": "Bag"}]
    responses, statuses = run_batch(handler, context, requests, headers)
    assert statuses == [200, 200, 200, 200, 422, 200]

    first, second, third, prediction, refused, from_header = responses
    assert (from_header["target"], from_header["target_name"]) == (8, "Bag")
    assert (first["target"], first["target_name"]) == (1, "Trouser")
    assert (second["target"], second["target_name"]) == (9, "Ankle boot")
    predicted = next(iter(prediction))  # the top class of the plain prediction
    assert third["target_name"] == predicted
    assert third["probability"] == pytest.approx(prediction[predicted], abs=1e-6)
    assert (first["steps"], third["steps"]) == (4, 6)
    assert refused["type"] == "ParameterOutOfRange"

    for answer in (first, second, third):
        assert np.asarray(answer["attributions"]).shape == (28, 28)
        assert isinstance(answer["delta"], float)
        heatmap = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
        assert heatmap.format == "PNG" and heatmap.size == (340, 168)
        json.dumps(answer)
    # Different targets, different attributions.
    assert first["attributions"] != second["attributions"]


@pytest.mark.parametrize("compact", [True, False])
def test_explanations_go_as_compact_json_unless_an_envelope_needs_objects(tiny_export_dir, compact):
    context = make_context(
        tiny_export_dir, {"handler": {"ig_steps": 4, "compact_explanations": compact}}
    )
    handler = TorchServeHandler()
    handler.initialize(context)
    requests = [{"body": png_bytes()}, {"body": b"not an image"}, {"body": png_bytes()}]
    set_requests(context, [EXPLAIN, EXPLAIN, {}])
    explained, refused, predicted = handler.handle(requests, context)
    assert isinstance(predicted, dict)  # TorchServe pretty-prints it: small, read from curl
    if not compact:  # objects, for KServe's envelope to wrap; TorchServe encodes them
        assert isinstance(explained, dict) and isinstance(refused, dict)
        return
    # Strings go out as they are: no spaces, no newlines, the same JSON.
    assert isinstance(explained, str) and isinstance(refused, str)
    answer = json.loads(explained)
    assert explained == json.dumps(answer, separators=(",", ":"))
    assert answer["method"] == "integrated_gradients" and len(answer["attributions"]) == 28
    assert json.loads(refused)["type"] == "InvalidImage"
    assert context.get_response_status(1)[0] == 400


def test_explanations_split_across_the_path_threads_only_while_no_other_worker_runs(
    handler_and_context, monkeypatch
):
    """fashion_serve.workers says whether another worker runs (tested on real processes in
    test_fashion_workers); here, that the handler splits only when none does."""
    handler, context = handler_and_context
    assert handler.service.path_threads is not None and handler.service.path_threads.count == 2
    given = []
    real_attribute = fashion_service.attribute

    def recording_attribute(*args):
        given.append(args[9])  # the path threads, or None
        return real_attribute(*args)

    monkeypatch.setattr(fashion_service, "attribute", recording_attribute)
    answers = []
    for running in (False, True):
        monkeypatch.setattr(
            handler.service.siblings, "any_running", lambda running=running: running
        )
        # One image: its 16 points in two passes of 8 when split.
        responses, statuses = run_batch(
            handler, context, [{"body": png_bytes()}], [{**EXPLAIN, "X-Steps": "16"}]
        )
        assert statuses == [200]
        answers += responses
    assert given == [handler.service.path_threads, None]
    assert all(answer["attributions"] == answers[0]["attributions"] for answer in answers)


def test_no_more_path_threads_than_usable_cores(tiny_export_dir, monkeypatch):
    monkeypatch.setattr(fashion_service, "usable_cores", lambda: 1)
    handler = TorchServeHandler()
    handler.initialize(make_context(tiny_export_dir))
    assert handler.service.path_threads is None  # one core: splitting would only add hand-offs
    monkeypatch.setattr(fashion_service, "usable_cores", lambda: 16)
    handler.initialize(make_context(tiny_export_dir, {"handler": {"explain_threads": 3}}))
    assert handler.service.path_threads.count == 3


def test_saliency_alone_does_not_look_at_the_siblings(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    looked = []
    monkeypatch.setattr(handler.service.siblings, "any_running", lambda: looked.append(1) or True)
    _, statuses = run_batch(
        handler, context, [{"body": png_bytes()}], [{**EXPLAIN, "X-Method": "saliency"}]
    )
    assert statuses == [200] and not looked
    run_batch(handler, context, [{"body": png_bytes()}], [EXPLAIN])
    assert looked == [1]


def test_explain_threads_1_keeps_every_explanation_on_the_workers_thread(tiny_export_dir):
    context = make_context(tiny_export_dir, {"handler": {"explain_threads": 1}})
    handler = TorchServeHandler()
    handler.initialize(context)
    assert handler.service.path_threads is None


def test_explain_header_is_read_per_request():
    context = make_context(".")
    set_requests(context, [{"explain": "True"}, {}, {"Explain": "true"}, {"explain": "False"}])
    assert [wants_explanation(context, i) for i in range(4)] == [True, False, True, False]


def test_decompression_bomb_in_a_batch_is_413_for_that_request_only(tiny_export_dir):
    context = make_context(tiny_export_dir, {"handler": {"max_image_pixels": 10_000}})
    handler = TorchServeHandler()
    handler.initialize(context)
    big = encode(Image.new("L", (101, 100)), "PNG")
    responses, statuses = run_batch(handler, context, [{"body": big}, {"body": png_bytes()}])
    assert statuses == [413, 200]
    assert responses[0]["type"] == "ImageTooLarge" and "10,000" in responses[0]["message"]


def test_an_unexpected_failure_fails_only_its_request(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    real_prepare = fashion_service.prepare_image_with_facts

    def flaky_prepare(image_bytes, *args):
        if image_bytes == b"boom":
            raise RuntimeError("a bug")
        return real_prepare(image_bytes, *args)

    monkeypatch.setattr(fashion_service, "prepare_image_with_facts", flaky_prepare)
    responses, statuses = run_batch(handler, context, [{"body": b"boom"}, {"body": png_bytes()}])
    assert statuses == [500, 200]
    assert responses[0]["type"] == "InternalError" and "a bug" not in responses[0]["message"]
    assert len(responses[1]) == 5


def test_failed_explanations_leave_the_predictions_standing(handler_and_context, monkeypatch):
    handler, context = handler_and_context

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(fashion_service, "attribute", out_of_memory)
    requests = [{"body": png_bytes()}, {"body": png_bytes()}]
    responses, statuses = run_batch(handler, context, requests, [{}, EXPLAIN])
    assert statuses == [200, 500]
    assert len(responses[0]) == 5 and responses[1]["type"] == "InternalError"


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="max_ig_steps"):
        HandlerSettings.from_model_yaml({"handler": {"max_ig_steps": 0}})


def test_settings_refuse_an_unknown_key_and_list_the_known_ones():
    with pytest.raises(ValueError, match="ig_step") as refused:
        HandlerSettings.from_model_yaml({"handler": {"ig_step": 20}})
    assert "ig_steps" in str(refused.value) and "max_image_bytes" in str(refused.value)


def test_worker_with_a_mistyped_setting_fails_to_load(tiny_export_dir):
    context = make_context(tiny_export_dir, {"handler": {"topk": 3, "ig_step": 20}})
    with pytest.raises(ValueError, match="unknown key 'ig_step'"):
        TorchServeHandler().initialize(context)


def test_each_request_gets_the_explanation_method_it_asked_for(handler_and_context):
    handler, context = handler_and_context
    methods = ["integrated_gradients", "saliency", "input_x_gradient", "occlusion"]
    requests = [{"body": png_bytes(), "method": method.encode()} for method in methods]
    responses, statuses = run_batch(handler, context, requests, [EXPLAIN] * len(requests))
    assert statuses == [200] * len(methods)
    assert [answer["method"] for answer in responses] == methods
    ig, *cheaper = responses
    assert ig["steps"] == 8 and isinstance(ig["delta"], float)  # the fixture's ig_steps
    for answer in cheaper:
        assert answer["steps"] is None and answer["delta"] is None
        assert np.abs(np.asarray(answer["attributions"])).sum() > 0
    # Same target, different methods, different maps.
    assert len({json.dumps(answer["attributions"]) for answer in responses}) == len(methods)

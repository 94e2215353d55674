"""The handler's metrics: declared where TorchServe looks, and what a batch records.

The recorder runs against TorchServe's real metrics cache (loaded from
monitoring/metrics.yaml, as a worker does); the lines it logs are what the frontend turns
into Prometheus series (tests/monitoring/test_prometheus_e2e.py checks that end).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from fashion_serve import metrics as fm
from fashion_serve.contract import ModelContract
from fashion_serve.torchserve_runtime import TorchServeHandler
from tests.conftest import REPO_ROOT, make_contract
from tests.handler.helpers import (
    encode,
    garment,
    handle_json,
    make_context,
    png_bytes,
    set_requests,
)
from training.__main__ import class_prior

METRICS_FILE = REPO_ROOT / "monitoring" / "metrics.yaml"
LINE = re.compile(r"\[METRICS\](?P<name>[^.]+)\.[^:]*:(?P<value>[^|]+)\|#(?P<dims>[^|]*)\|")


def test_every_metric_is_declared_with_the_dimensions_the_handler_sends():
    assert fm.undeclared(yaml.safe_load(METRICS_FILE.read_text())) == []


def test_a_metric_missing_from_the_file_is_reported():
    config = yaml.safe_load(METRICS_FILE.read_text())
    config["model_metrics"]["counter"] = [
        entry for entry in config["model_metrics"]["counter"] if entry["name"] != fm.REFUSALS.name
    ]
    assert fm.undeclared(config) == [fm.REFUSALS.name]


def test_names_follow_prometheus_conventions():
    for spec in fm.METRICS:
        assert re.fullmatch(r"fashion_[a-z0-9_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == fm.COUNTER), spec.name
        assert all(re.fullmatch(r"[a-z_]+", label) for label in spec.labels), spec
    assert fm.LATENCY.name.endswith("_seconds")


@pytest.mark.parametrize(
    ("probability", "band"),
    [(0.995, "0.99-1"), (0.99, "0.99-1"), (0.95, "0.90-0.99"), (0.7, "0.70-0.90"),
     (0.6, "0.50-0.70"), (0.2, "0-0.50")],
)  # fmt: skip
def test_confidence_bands(probability, band):
    assert fm.confidence_band(probability) == band
    assert band in fm.BAND_NAMES


def test_size_and_format_classes_are_bounded():
    assert fm.size_class(28, 28, (28, 28)) == "exact"
    assert fm.size_class(100, 40, (28, 28)) == "small"
    assert fm.size_class(1024, 800, (28, 28)) == "medium"
    assert fm.size_class(4000, 3000, (28, 28)) == "large"
    assert fm.format_class("JPEG") == "jpeg" and fm.format_class("PCX") == "other"
    assert fm.label_value("a,b:c|d") == "a_b_c_d"


def metric_lines(caplog) -> list[tuple[str, float, dict]]:
    lines = []
    for record in caplog.records:
        match = LINE.match(record.getMessage())
        if match and match["name"].startswith("fashion_"):
            dims = dict(d.split(":", 1) for d in match["dims"].split(","))
            lines.append((match["name"], float(match["value"]), dims))
    return lines


def totals(lines, name: str, *labels: str) -> dict:
    summed: Counter = Counter()
    for line_name, value, dims in lines:
        if line_name == name:
            summed[tuple(dims[label] for label in labels)] += value
    return dict(summed)


@pytest.fixture
def metered_handler(tiny_export_dir):
    context = make_context(tiny_export_dir, {"handler": {"ig_steps": 4}})
    cache = MetricsCacheYamlImpl(str(METRICS_FILE))
    cache.initialize_cache()
    cache.model_name = context.model_name
    context.metrics = cache
    handler = TorchServeHandler()
    return handler, context


def test_load_records_the_training_reference_and_zeroed_counters(metered_handler, caplog):
    handler, context = metered_handler
    with caplog.at_level(logging.INFO):
        handler.initialize(context)
    lines = metric_lines(caplog)
    assert totals(lines, fm.WORKER_LOADS.name) == {(): 1}
    prior = totals(lines, fm.CLASS_PRIOR.name, "class")
    assert prior == {(name,): pytest.approx(0.1) for name in handler.service.contract.class_names}
    assert totals(lines, fm.PIXEL_MEAN.name) == {(): pytest.approx(0.286)}
    zeroed = totals(lines, fm.PREDICTIONS.name, "class", "confidence")
    assert len(zeroed) == 10 * len(fm.BAND_NAMES) and set(zeroed.values()) == {0}
    assert all(dims["ModelName"] == "fashion" and dims["Level"] == "Model" for *_, dims in lines)


def test_a_batch_records_latency_answers_refusals_and_inputs(metered_handler, caplog):
    handler, context = metered_handler
    handler.initialize(context)
    light = encode(garment(width=300, height=200, light_background=True).convert("RGB"), "JPEG")
    requests = [{"body": png_bytes()}, {"body": b"not an image"}, {"body": light}]
    requests.append({"body": png_bytes()})  # explained
    set_requests(context, [{}, {}, {}, {"explain": "True"}])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        responses = handle_json(handler, requests, context)
        handler.service.recorder.flush()  # counters go out once a second; now, for the test
    failed = [r for r in caplog.records if "update metric with name:fashion_" in r.getMessage()]
    assert not failed
    lines = metric_lines(caplog)

    latency = [(v, d["kind"]) for name, v, d in lines if name == fm.LATENCY.name]
    assert sorted(kind for _, kind in latency) == ["explanation", "prediction"]  # one per batch
    assert len({v for v, _ in latency}) == 1 and 0 < latency[0][0] < 60  # seconds
    requests = totals(lines, fm.REQUESTS.name, "kind", "version")
    version = handler.service.model_version
    assert requests == {("prediction", version): 3, ("explanation", version): 1}
    assert totals(lines, fm.BATCHES.name) == {(): 1}
    assert totals(lines, fm.REFUSALS.name, "code", "type") == {("400", "InvalidImage"): 1}

    expected = Counter()
    for answer in (responses[0], responses[2]):
        top_class, top_probability = next(iter(answer.items()))
        expected[top_class, fm.confidence_band(top_probability)] += 1
    assert totals(lines, fm.PREDICTIONS.name, "class", "confidence") == dict(expected)

    inputs = totals(lines, fm.INPUTS.name, "format", "size")
    assert inputs == {("png", "small"): 2, ("jpeg", "medium"): 1}
    assert totals(lines, fm.INVERTED.name) == {(): 1}
    (brightness,) = totals(lines, fm.BRIGHTNESS_SUM.name).values()
    assert 0 < brightness < 3
    assert totals(lines, fm.EXPLANATION_STEPS.name) == {(): 4}
    (delta,) = [v for name, v, _ in lines if name == fm.EXPLANATION_DELTA.name]
    assert delta == pytest.approx(abs(responses[3]["delta"]))


def test_methods_without_steps_or_delta_and_several_images_are_counted(metered_handler, caplog):
    handler, context = metered_handler
    handler.initialize(context)
    several = {"data": [base64.b64encode(png_bytes()).decode()] * 3}
    set_requests(context, [{"explain": "True", "X-Method": "saliency"}, {}])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        responses = handle_json(handler, [{"body": png_bytes()}, {"body": several}], context)
        handler.service.recorder.flush()
    assert responses[0]["method"] == "saliency" and len(responses[1]) == 3
    lines = metric_lines(caplog)
    assert not [r for r in caplog.records if "Recording the metrics" in r.getMessage()]
    assert sum(totals(lines, fm.PREDICTIONS.name, "class", "confidence").values()) == 3
    assert totals(lines, fm.INPUTS.name, "format", "size") == {("png", "small"): 4}
    assert fm.EXPLANATION_DELTA.name not in {name for name, *_ in lines}
    assert fm.EXPLANATION_STEPS.name not in {name for name, *_ in lines}


def test_counters_are_summed_until_the_next_flush(metered_handler, caplog, monkeypatch):
    """Histograms at once; counters summed until the next flush, one line per label set."""
    # The recorder's thread (started by initialize) first flushes after this interval: not
    # within the test, whose batches a busy machine may stretch past a second.
    monkeypatch.setattr(fm, "FLUSH_INTERVAL_S", 3600.0)
    handler, context = metered_handler
    handler.initialize(context)
    full = [{"body": png_bytes()}] * 8  # the context's batch size
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            set_requests(context, [{}] * 8)
            handle_json(handler, full, context)
        held = metric_lines(caplog)
        handler.service.recorder.flush()
    assert [name for name, *_ in held].count(fm.LATENCY.name) == 3
    assert fm.REQUESTS.name not in {name for name, *_ in held}  # held until the flush
    sent = metric_lines(caplog)[len(held) :]
    assert totals(sent, fm.REQUESTS.name, "kind", "version") == {
        ("prediction", handler.service.model_version): 24
    }
    assert sum(totals(sent, fm.PREDICTIONS.name, "class", "confidence").values()) == 24
    assert [name for name, *_ in sent].count(fm.PREDICTIONS.name) <= 5  # one line a band


def test_brightness_is_the_mean_input_pixel(metered_handler, caplog):
    handler, context = metered_handler
    handler.initialize(context)
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[:14] = 255  # half white, on a black border at the bottom
    set_requests(context, [{"X-Invert": "false"}])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        handle_json(handler, [{"body": encode(Image.fromarray(pixels), "PNG")}], context)
        handler.service.recorder.flush()
    assert totals(metric_lines(caplog), fm.BRIGHTNESS_SUM.name) == {(): pytest.approx(0.5)}


def test_metrics_false_records_nothing(tiny_export_dir, caplog):
    context = make_context(tiny_export_dir, {"handler": {"metrics": False}})
    context.metrics = MetricsCacheYamlImpl(str(METRICS_FILE))
    handler = TorchServeHandler()
    with caplog.at_level(logging.INFO):
        handler.initialize(context)
        set_requests(context, [{}])
        handle_json(handler, [{"body": png_bytes()}], context)
    assert handler.service.recorder is None and metric_lines(caplog) == []


def test_contract_class_prior_round_trips_and_old_contracts_load():
    contract = make_contract(class_prior=(0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05))
    assert ModelContract.from_json(contract.to_json()) == contract
    old = json.loads(make_contract().to_json())
    del old["class_prior"]  # an export from before the field existed
    assert ModelContract.from_json(json.dumps(old)).prior() == (0.1,) * 10
    with pytest.raises(ValueError, match="sum to 1"):
        make_contract(class_prior=(0.5,) * 10)


def test_training_writes_the_label_shares_as_the_prior():
    labels = torch.tensor([0, 0, 1, 9])
    assert class_prior(labels) == (0.5, 0.25, 0, 0, 0, 0, 0, 0, 0, 0.25)


def test_a_failure_in_the_metrics_never_fails_the_batch(metered_handler, monkeypatch):
    handler, context = metered_handler
    handler.initialize(context)

    def broken(outcome):
        raise RuntimeError("a metrics bug")

    monkeypatch.setattr(handler.service.recorder, "record_batch", broken)
    set_requests(context, [{}])
    (answer,) = handle_json(handler, [{"body": png_bytes()}], context)
    assert context.get_response_status(0)[0] == 200 and len(answer) == 5


def test_steps_auto_answers_its_steps_and_counts_what_missed_the_tolerance(metered_handler, caplog):
    """An untrained model's paths converge within any tolerance but a vanishing one: the
    first request meets 1 at once; the second asks for 1e-9, which 200 steps cannot give."""
    handler, context = metered_handler
    handler.initialize(context)
    auto = {"explain": "True", "X-Steps": "auto"}
    set_requests(
        context, [{**auto, "X-Delta-Tolerance": "1"}, {**auto, "X-Delta-Tolerance": "1e-9"}]
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        met, missed = handle_json(handler, [{"body": png_bytes()}, {"body": png_bytes()}], context)
        handler.service.recorder.flush()
    assert (met["steps"], met["delta_tolerance"], met["converged"]) == (7, 1.0, True)
    assert abs(met["delta"]) <= 1
    # 7, 15, 31, 63 and 127 points; 255 would pass max_ig_steps (200)
    assert (missed["steps"], missed["converged"]) == (127, False)
    assert abs(missed["delta"]) > 1e-9
    lines = metric_lines(caplog)
    assert totals(lines, fm.UNCONVERGED.name) == {(): 1}
    assert totals(lines, fm.EXPLANATION_STEPS.name) == {(): 7 + 127}

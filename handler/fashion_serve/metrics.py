"""The handler's Prometheus metrics: names, labels, bands, and a recorder fed with a batch.

The recorder knows no server: it hands each observation to the runtime's `emit(spec, value,
label_values)` (torchserve_runtime writes TorchServe metric lines, kserve_runtime feeds
prometheus_client). The names and labels are the same on both, so monitoring/ serves either.

TorchServe 0.12 only publishes a custom metric that is declared, with the same dimension
names in the same order, under `model_metrics:` of the metrics file the server starts
with (`metrics_config`, `metrics_mode=prometheus`): monitoring/metrics.yaml declares every
METRICS entry below (tests/handler/test_fashion_metrics.py holds the two together). The
frontend adds `Hostname`; `ModelName` and `Level` come last, from TorchServe's API.
docs/monitoring.md says what each metric means and what to do when it moves.

Each observation is a log line that the frontend parses (what that costs:
docs/performance.md#what-the-metrics-cost), so a batch sends few: the latency histogram
one line per kind (prediction, explanation) and the convergence-delta histogram one per
image explained with integrated gradients; counters are summed and sent by a thread at most
once a second, one line per counter and label set that occurred. Histograms get Prometheus'
default buckets (0.005 ... 10), so durations are recorded in seconds. Values those buckets
would blur are counters instead: the top-1 probability is a band label on the prediction
counter (finer where a classifier lives, 0.9 and up, and no extra line), steps and
brightness are sums to divide by a count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fashion_serve.contract import ModelContract
from fashion_serve.image import ImageFacts

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # COUNTER, GAUGE or HISTOGRAM
    unit: str
    labels: tuple[str, ...]  # our own; TorchServe appends ModelName, Level (and Hostname)


Emit = Callable[[MetricSpec, float, tuple[str, ...]], None]


# One observation per batch and kind, not per request: every request of a batch waits the
# same handle() call, and each observation is a log line (see the module docstring).
LATENCY = MetricSpec("fashion_handler_latency_seconds", HISTOGRAM, "seconds", ("kind",))
# version: which model version answered (bounded: the few versions an update keeps loaded).
REQUESTS = MetricSpec("fashion_requests_total", COUNTER, "count", ("kind", "version"))
FLUSH_INTERVAL_S = 1.0
# Batch fill is fashion_requests_total / fashion_batches_total: two counters, no line per batch.
BATCHES = MetricSpec("fashion_batches_total", COUNTER, "count", ())
PREDICTIONS = MetricSpec("fashion_predictions_total", COUNTER, "count", ("class", "confidence"))
REFUSALS = MetricSpec("fashion_refusals_total", COUNTER, "count", ("code", "type"))
INPUTS = MetricSpec("fashion_inputs_total", COUNTER, "count", ("format", "size"))
INVERTED = MetricSpec("fashion_inputs_auto_inverted_total", COUNTER, "count", ())
BRIGHTNESS_SUM = MetricSpec("fashion_input_brightness_sum_total", COUNTER, "ratio", ())
EXPLANATION_STEPS = MetricSpec("fashion_explanation_steps_total", COUNTER, "count", ())
EXPLANATION_DELTA = MetricSpec("fashion_explanation_convergence_delta", HISTOGRAM, "absolute", ())
# steps "auto" explanations that reached max_ig_steps with |delta| still over their tolerance.
UNCONVERGED = MetricSpec("fashion_explanations_unconverged_total", COUNTER, "count", ())
WORKER_LOADS = MetricSpec("fashion_worker_loads_total", COUNTER, "count", ())
CLASS_PRIOR = MetricSpec("fashion_training_class_prior", GAUGE, "ratio", ("class",))
PIXEL_MEAN = MetricSpec("fashion_training_pixel_mean", GAUGE, "ratio", ())

METRICS = (
    LATENCY,
    REQUESTS,
    BATCHES,
    PREDICTIONS,
    REFUSALS,
    INPUTS,
    INVERTED,
    BRIGHTNESS_SUM,
    EXPLANATION_STEPS,
    EXPLANATION_DELTA,
    UNCONVERGED,
    WORKER_LOADS,
    CLASS_PRIOR,
    PIXEL_MEAN,
)

PREDICTION = "prediction"
EXPLANATION = "explanation"

# Top-1 probability bands (the `confidence` label), lower bound inclusive. Finer where a
# classifier usually lives (0.9+) than the default histogram buckets (0.5, 0.75, 1).
CONFIDENCE_BANDS = ((0.99, "0.99-1"), (0.9, "0.90-0.99"), (0.7, "0.70-0.90"), (0.5, "0.50-0.70"))
LOWEST_BAND = "0-0.50"
BAND_NAMES = (LOWEST_BAND, *reversed([name for _, name in CONFIDENCE_BANDS]))

# Input size classes by the longer side as sent, against the model's input side (28).
SIZE_EXACT = "exact"  # the model's own size: FashionMNIST-like crops
SIZE_SMALL = "small"  # up to 4x the input side: thumbnails, icons
SIZE_MEDIUM = "medium"  # up to 1024 px: web images
SIZE_LARGE = "large"  # phone photos and scans
SIZE_CLASSES = (SIZE_EXACT, SIZE_SMALL, SIZE_MEDIUM, SIZE_LARGE)
MEDIUM_SIDE = 1024

KNOWN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # anything else: "other"

# TorchServe's metric lines are `name.unit:value|#Dim:value,...`: these characters would
# cut a label value short or drop the line.
_UNSAFE = str.maketrans({c: "_" for c in ",:|#\n\r"})


def label_value(text: str) -> str:
    return str(text).translate(_UNSAFE)


def confidence_band(probability: float) -> str:
    for lower, name in CONFIDENCE_BANDS:
        if probability >= lower:
            return name
    return LOWEST_BAND


def size_class(width: int, height: int, input_size: tuple[int, int]) -> str:
    if (height, width) == tuple(input_size):
        return SIZE_EXACT
    side = max(width, height)
    if side <= 4 * max(input_size):
        return SIZE_SMALL
    return SIZE_MEDIUM if side <= MEDIUM_SIDE else SIZE_LARGE


def format_class(pillow_format: str) -> str:
    name = pillow_format.upper()
    return name.lower() if name in KNOWN_FORMATS else "other"


@dataclass
class BatchOutcome:
    """What one handle() call did, as the recorder needs it."""

    seconds: float  # handle() wall time: every request of the batch waited this long
    kinds: list[str]  # PREDICTION or EXPLANATION, per request
    refusals: list[tuple[int, str]]  # (HTTP status, error type) of each refused request
    answers: list  # per row (decoded image): its answer dict, or an error if it failed
    indices: list[int]  # batch index of each decoded image (rows of `probabilities`)
    pixels: list[np.ndarray]  # (H, W) uint8 model inputs, per row
    facts: list[ImageFacts]  # per row
    probabilities: torch.Tensor | None  # (rows, num_classes), None when no image decoded


class HandlerMetrics:
    """Records a batch's outcomes through the runtime's `emit` (see the module docstring)."""

    def __init__(self, emit: Emit, contract: ModelContract, model_version: str = "") -> None:
        self._emit = emit
        self._pending: Counter = Counter()  # (counter spec, label values) -> sum not yet sent
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()
        self.contract = contract
        self.model_version = label_value(model_version)
        self.class_labels = [label_value(name) for name in contract.class_names]
        self.input_size = tuple(contract.input_shape[1:])
        # Counters go out once a second from this thread, whatever the traffic: a quiet
        # server's counts arrive within a second, a busy one sends a few lines a second.
        threading.Thread(target=self._flush_every_interval, daemon=True).start()

    def _add(self, spec: MetricSpec, value: float, *label_values: str) -> None:
        self._emit(spec, value, label_values)

    def record_model(self) -> None:
        """At load: one more worker (re)load, the training reference the drift panels and
        alerts compare against, and every fixed-label counter at 0, so that shares and
        rates exist before traffic."""
        self._add(WORKER_LOADS, 1)
        for label, share in zip(self.class_labels, self.contract.prior(), strict=True):
            self._add(CLASS_PRIOR, share, label)
            for band in BAND_NAMES:
                self._add(PREDICTIONS, 0, label, band)
        self._add(PIXEL_MEAN, sum(self.contract.mean) / len(self.contract.mean))
        for spec in (INVERTED, BRIGHTNESS_SUM, EXPLANATION_STEPS):
            self._add(spec, 0)

    def _count(self, spec: MetricSpec, value: float, *label_values: str) -> None:
        """A counter increment, sent with the next flush."""
        with self._lock:
            self._pending[spec, label_values] += value

    def flush(self) -> None:
        """Send the summed counter increments: one line per counter and label set."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._flushed_at = time.monotonic()
        for (spec, label_values), value in pending.items():
            self._add(spec, value, *label_values)

    def _flush_every_interval(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            if self._pending and time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
                try:
                    self.flush()
                except Exception:  # never let metrics take the worker down
                    logging.getLogger(__name__).exception("Sending the handler's counters failed")

    def record_batch(self, outcome: BatchOutcome) -> None:
        """Histograms now; counters summed and sent by the flushing thread."""
        self._count(BATCHES, 1)
        for kind, count in Counter(outcome.kinds).items():
            self._add(LATENCY, outcome.seconds, kind)
            self._count(REQUESTS, count, kind, self.model_version)

        refusals = Counter((str(code), label_value(kind)) for code, kind in outcome.refusals)
        for (code, kind), count in refusals.items():
            self._count(REFUSALS, count, code, kind)

        if outcome.indices:
            self._record_inputs(outcome)
            self._record_answers(outcome)

    def _record_inputs(self, outcome: BatchOutcome) -> None:
        inputs = Counter(
            (format_class(f.format), size_class(f.width, f.height, self.input_size))
            for f in outcome.facts
        )
        for (image_format, size), count in inputs.items():
            self._count(INPUTS, count, image_format, size)
        inverted = sum(f.auto_inverted for f in outcome.facts)
        if inverted:
            self._count(INVERTED, inverted)
        # Mean pixel of the model's input (after any inversion), 0..1, summed over images.
        pixel_count = outcome.pixels[0].size
        brightness = sum(int(p.sum(dtype=np.int64)) for p in outcome.pixels) / (255 * pixel_count)
        self._count(BRIGHTNESS_SUM, brightness)

    def _record_answers(self, outcome: BatchOutcome) -> None:
        top_probability, top_class = outcome.probabilities.max(dim=1)
        predicted: Counter = Counter()
        steps = unconverged = 0
        for idx, answer, probability, class_index in zip(
            outcome.indices,
            outcome.answers,
            top_probability.tolist(),
            top_class.tolist(),
            strict=True,
        ):
            if not isinstance(answer, dict):
                continue  # this image's request failed after decoding
            if outcome.kinds[idx] == EXPLANATION:
                steps += answer.get("steps") or 0  # None: a method without steps
                if answer.get("delta") is not None:
                    self._add(EXPLANATION_DELTA, abs(float(answer["delta"])))
                unconverged += answer.get("converged") is False
                continue
            predicted[self.class_labels[class_index], confidence_band(probability)] += 1
        for (label, band), count in predicted.items():
            self._count(PREDICTIONS, count, label, band)
        if steps:
            self._count(EXPLANATION_STEPS, steps)
        if unconverged:
            self._count(UNCONVERGED, unconverged)


def declared_model_metrics(metrics_yaml: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    """`model_metrics:` of a TorchServe metrics file: name -> (kind, dimension names)."""
    declared = {}
    for kind, entries in (metrics_yaml.get("model_metrics") or {}).items():
        for entry in entries or []:
            declared[entry["name"]] = (kind, tuple(entry["dimensions"]))
    return declared


def expected_dimensions(spec: MetricSpec) -> tuple[str, ...]:
    return (*spec.labels, "ModelName", "Level")


def undeclared(metrics_yaml: dict, specs: Sequence[MetricSpec] = METRICS) -> list[str]:
    """The specs a metrics file does not declare exactly (kind and dimensions): each would
    never reach Prometheus."""
    declared = declared_model_metrics(metrics_yaml)
    return [
        spec.name
        for spec in specs
        if declared.get(spec.name) != (spec.kind, expected_dimensions(spec))
    ]

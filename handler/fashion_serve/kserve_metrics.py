"""The KServe runtime's metrics, under the names and labels TorchServe publishes them, so that
one dashboard and one set of alerts (monitoring/) serve either runtime; summed over the
worker processes through prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR,
which the supervisor sets)."""

from __future__ import annotations

import os
import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from fashion_serve.metrics import COUNTER, GAUGE, METRICS, MetricSpec


class PrometheusMetrics:
    """The recorder's `emit` for this runtime: prometheus_client metrics, written to files in
    PROMETHEUS_MULTIPROC_DIR when set, so /metrics sums the worker processes. Labels as
    TorchServe's: the spec's own, then ModelName, Level and Hostname."""

    def __init__(self, model_name: str) -> None:
        self.extra = (model_name, "Model", socket.gethostname())
        self.metrics = {}
        for spec in METRICS:
            labels = (*spec.labels, "ModelName", "Level", "Hostname")
            if spec.kind == COUNTER:
                metric = Counter(spec.name, spec.name, labels)
            elif spec.kind == GAUGE:  # the same value in every worker
                metric = Gauge(spec.name, spec.name, labels, multiprocess_mode="max")
            else:  # Prometheus' default buckets, as TorchServe's frontend uses
                metric = Histogram(spec.name, spec.name, labels)
            self.metrics[spec.name] = metric

    def __call__(self, spec: MetricSpec, value: float, label_values: tuple[str, ...]) -> None:
        metric = self.metrics[spec.name].labels(*label_values, *self.extra)
        if spec.kind == COUNTER:
            metric.inc(value)
        elif spec.kind == GAUGE:
            metric.set(value)
        else:
            metric.observe(value)


class ServerCounters:
    """The counters TorchServe's frontend publishes and monitoring/ (alerts, dashboard) reads,
    kept under the same names and labels, so one dashboard serves either runtime: requests
    received for the model, and responses by status class (all but health and /metrics)."""

    def __init__(self, model_name: str, model_version: str) -> None:
        hostname = socket.gethostname()
        received = Counter("ts_inference_requests_total", "Inference requests received",
                           ("model_name", "model_version", "hostname"))  # fmt: skip
        self.received = received.labels(model_name, model_version, hostname)
        # Gauges only for their names: prometheus_client adds `_total` to a counter's, and
        # the alerts read TorchServe's `Requests5XX`. Only ever increased, summed over workers.
        self.by_class = {
            digit: Gauge(
                f"Requests{digit}XX", f"{digit}XX responses", ("Level", "Hostname"),
                multiprocess_mode="sum",
            ).labels("Host", hostname)
            for digit in "245"
        }  # fmt: skip

    def responded(self, status: int) -> None:
        counter = self.by_class.get(str(status)[0])
        if counter is not None:
            counter.inc()


def metrics_text() -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()

"""The TorchServe runtime: a thin adapter from TorchServe's handler API to the core (service).

TorchServe loads handler/fashion_handler.py (a few lines naming the class below); this module
maps TorchServe's side of a batch onto `FashionService.run` and back:
- each request's body and headers, and whether it came through an explanations endpoint
  (the frontend sets `explain: True` on /explanations, :explain and /v2/.../explain; the
  stock BaseHandler.handle looks at request 0 only, so a batch here may mix both);
- each answer's status per request (context.set_response_status by index: a refused request
  gets its 4xx, its batch-mates their 200), its content type and the model version header;
- each explanation's encoding: compact JSON (handler.compact_explanations), where TorchServe
  would pretty-print it; predictions keep TorchServe's pretty-printed JSON, small and
  readable from curl;
- the handler's metrics as TorchServe metric lines (declared in monitoring/metrics.yaml);
- the management API's describe (GET /models/{m}?customized=true): the OIP metadata.

Requests, options and answers are in docs/api.md; BaseHandler's preprocess/inference/
postprocess are left unused, because each request of a batch carries its own options.
"""

from __future__ import annotations

import json
import os

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from fashion_serve.metrics import COUNTER, GAUGE, HISTOGRAM, MetricSpec
from fashion_serve.service import OK, FashionService, Request
from fashion_serve.settings import HandlerSettings

JSON = "application/json"
# Every answer names the model version that made it (a rollout serves two versions at once).
VERSION_HEADER = "X-Model-Version"
COMPACT = (",", ":")  # json.dumps separators: no spaces
_METRIC_TYPES = {
    COUNTER: MetricTypes.COUNTER,
    GAUGE: MetricTypes.GAUGE,
    HISTOGRAM: MetricTypes.HISTOGRAM,
}


def wants_explanation(context, idx: int) -> bool:
    """Whether request `idx` came through an explanations endpoint (header explain: True)."""
    headers = context.get_all_request_header(idx) or {}
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == "explain" and isinstance(value, str):
            return value.strip().lower() == "true"
    return False


class TorchServeMetrics:
    """The recorder's `emit` for TorchServe: lines through the worker's metrics cache."""

    def __init__(self, metrics, model_name: str) -> None:
        self.metrics = metrics
        self.model_name = model_name

    def __call__(self, spec: MetricSpec, value: float, label_values: tuple[str, ...]) -> None:
        dimensions = [
            Dimension(name, label) for name, label in zip(spec.labels, label_values, strict=True)
        ]
        # ModelName and Level given here, as TorchServe would add them: without request ids
        # (at load, or in a test's context) the cache would label the line Level=Error.
        dimensions += [Dimension("ModelName", self.model_name), Dimension("Level", "Model")]
        if spec.kind == COUNTER:
            self.metrics.add_counter(spec.name, value, None, dimensions)
        else:
            self.metrics.add_metric(
                spec.name, value, spec.unit, None, dimensions, _METRIC_TYPES[spec.kind]
            )


class TorchServeHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        settings = HandlerSettings.from_model_yaml(getattr(context, "model_yaml_config", None))
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            device = torch.device(f"cuda:{gpu_id}")
        else:
            device = torch.device("cpu")
        model = context.manifest["model"]
        emit = None
        if getattr(context, "metrics", None) is not None:
            emit = TorchServeMetrics(context.metrics, context.model_name)
        self.service = FashionService(
            os.path.join(properties["model_dir"], model["serializedFile"]),
            settings,
            device,
            model.get("modelName", ""),
            # The version TorchServe serves (the archive's, which archive.sh takes from
            # the contract).
            model.get("modelVersion"),
            emit,
        )
        self.initialized = True

    def handle(self, data: list[dict], context) -> list:
        if self._is_describe(data, context):
            return [json.dumps(self.service.metadata())]
        requests = [
            Request(row, context.get_all_request_header(idx) or {}, wants_explanation(context, idx))
            for idx, row in enumerate(data)
        ]
        answers = self.service.run(requests)
        for idx, answer in enumerate(answers):
            if answer.status != OK:
                context.set_response_status(answer.status, answer.phrase, idx)
            context.set_response_content_type(idx, JSON)
            context.set_response_header(idx, VERSION_HEADER, self.service.model_version)
        if not self.service.settings.compact_explanations:
            return [answer.body for answer in answers]
        # TorchServe's worker would send an object as json.dumps(indent=2), pure Python: an
        # explanation's 784 attributions one a line, 40 % more bytes and 2.5 times the time
        # of compact JSON (docs/performance.md#explanations). A string goes as it is.
        return [
            json.dumps(answer.body, separators=COMPACT) if request.explain else answer.body
            for request, answer in zip(requests, answers, strict=True)
        ]

    @staticmethod
    def _is_describe(data: list[dict], context) -> bool:
        """The management API's describe: TorchServe sends it alone, with no body, under a
        `describe` header. A client can send that header with a prediction too: that
        request is answered as a prediction, and its batch keeps one answer a request."""
        described = context.get_request_header(0, "describe") == "True"
        return described and len(data) == 1 and not data[0]

"""TorchServe handler for the FashionMNIST CNN: predictions and integrated-gradients explanations.

Thin on purpose: decoding lives in fashion_image, request parsing in fashion_request,
top-k in fashion_predict, explanations in fashion_explain, settings in fashion_settings.
TorchServe's loader wants exactly one class in this module.
handle() runs a batch as parse_requests -> inference -> top_k_answers or explain_rows:
BaseHandler's preprocess/postprocess/explain_handle are left unused, because here each
request of a batch carries its own options and may ask for a prediction or an explanation.

Requests (one image each; TorchServe batches concurrent requests itself):
    curl -T shirt.png          http://HOST:8080/predictions/fashion-cnn
    curl -F file=@shirt.jpg    http://HOST:8080/predictions/fashion-cnn       (any field name)
    curl -H 'Content-Type: application/json' -d '{"data": "<base64 or data: URL>"}' ...
    curl -H 'Content-Type: application/json' -d '{"instances": [{"data": "<base64>"}]}' \
         http://HOST:8080/v1/models/fashion-cnn:predict       (KServe v1; one instance)
Options, as headers (`-H 'X-Topk: 3' -H 'X-Target: Trouser'`, X-Invert, X-Steps), form
fields (`-F topk=3`) or fields of a JSON body or its KServe instance (headers win):
topk 1..10, target (index or class name; explanations), invert true|false|auto,
steps 1..max_ig_steps (explanations). TorchServe 0.12 drops query strings (`?topk=3`).

Responses:
    prediction   {"<class name>": probability, ...}   top-k, highest first
    explanation  {"target", "target_name", "probability", "steps", "delta",
                  "attributions": 28x28 floats, "heatmap_png": base64 PNG, 224x224}
    refusal      {"code": 400|413|422, "type": "...", "message": "..."} with that HTTP status,
                 for that request only (context.set_response_status per index); an
                 unexpected failure of one request is a 500 of the same shape.

Each request's own `explain: True` header (set by the frontend for /explanations,
:explain and /explain) picks explanation or prediction, so a batch may mix both; the
stock BaseHandler.handle looks at request 0 only.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

import fashion_errors as errors
from fashion_contract import load_torchscript
from fashion_explain import black_baseline, heatmap_base64, integrated_gradients, round_attributions
from fashion_image import prepare_image, to_batch_tensor
from fashion_predict import PROBABILITY_DECIMALS, inference_model, top_k_batch
from fashion_request import (
    OptionLimits,
    PreparedBatch,
    RequestOptions,
    options_from_headers,
    parse_request,
)
from fashion_settings import HandlerSettings

logger = logging.getLogger(__name__)

JSON = "application/json"
# Every answer names the model version that made it (a rollout serves two versions at once).
VERSION_HEADER = "X-Model-Version"


def wants_explanation(context, idx: int) -> bool:
    """Whether request `idx` came through an explanations endpoint (header explain: True)."""
    headers = context.get_all_request_header(idx) or {}
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == "explain" and isinstance(value, str):
            return value.strip().lower() == "true"
    return False


class FashionHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        self.settings = HandlerSettings.from_model_yaml(getattr(context, "model_yaml_config", None))
        # One intra-op thread per worker: torch's default (one per core) spins between ops
        # and fights the frontend and other workers for the same cores.
        torch.set_num_threads(self.settings.torch_threads)

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")

        self.manifest = context.manifest
        serialized_file = self.manifest["model"]["serializedFile"]
        self.model_pt_path = os.path.join(properties["model_dir"], serialized_file)
        self.model, self.contract = load_torchscript(self.model_pt_path, map_location=self.device)
        self.model.eval()
        # Predictions use a frozen, fused copy; explanations need the original's gradients.
        self.predict_model = inference_model(self.model, self.device)

        self.input_size = tuple(self.contract.input_shape[1:])  # (H, W)
        self.limits = OptionLimits(
            default_topk=min(self.settings.topk, self.contract.num_classes),
            default_steps=min(self.settings.ig_steps, self.settings.max_ig_steps),
            max_steps=self.settings.max_ig_steps,
        )
        self.baseline = black_baseline(self.contract.mean, self.contract.std, self.input_size)
        self.baseline = self.baseline.to(self.device)
        self.initialized = True
        logger.info(
            "Loaded %s %s on %s (%s)",
            self.contract.name,
            self.contract.version,
            self.device,
            self.settings,
        )

    def handle(self, data: list[dict], context) -> list:
        start = time.perf_counter()
        responses: list = [None] * len(data)
        prepared = self.parse_requests(data, context)
        for idx, error in prepared.refused.items():
            context.set_response_status(error.code, error.phrase, idx)
            responses[idx] = error.to_body()

        if prepared.indices:
            batch = to_batch_tensor(
                prepared.pixels, self.contract.mean, self.contract.std, self.device
            )
            probabilities = self.inference(batch)
            rows_to_explain = [
                row for row, idx in enumerate(prepared.indices) if wants_explanation(context, idx)
            ]
            rows_to_predict = [
                row for row in range(len(prepared.indices)) if row not in rows_to_explain
            ]
            if rows_to_predict:
                answers = self.top_k_answers(
                    probabilities[rows_to_predict], [prepared.options[r] for r in rows_to_predict]
                )
                for row, answer in zip(rows_to_predict, answers, strict=True):
                    responses[prepared.indices[row]] = answer
            if rows_to_explain:
                answers = self._explain_rows_or_fail(
                    batch, probabilities, prepared, rows_to_explain, context
                )
                for row, answer in zip(rows_to_explain, answers, strict=True):
                    responses[prepared.indices[row]] = answer

        for idx in range(len(data)):
            context.set_response_content_type(idx, JSON)
            context.set_response_header(idx, VERSION_HEADER, self.contract.version)
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time(
                "HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms"
            )
        return responses

    def parse_requests(self, data: list[dict], context) -> PreparedBatch:
        """Parse and decode each request, with options from its headers in `context`;
        a bad one is set aside with its error."""
        prepared = PreparedBatch()
        for idx, request in enumerate(data):
            try:
                image_bytes, options = parse_request(
                    request,
                    self.contract.class_names,
                    self.limits,
                    self.settings.max_image_bytes,
                    options_from_headers(context.get_all_request_header(idx) or {}),
                )
                pixels = prepare_image(
                    image_bytes, self.input_size, options.invert, self.settings.max_image_pixels
                )
            except errors.RequestError as error:
                logger.info("Request %d refused: %s %s", idx, error.code, error.message)
                prepared.refused[idx] = error
                continue
            except Exception:
                # A bug or a file no check foresaw: fail this request alone, keep the batch.
                logger.exception("Request %d failed in preprocessing", idx)
                prepared.refused[idx] = errors.internal_error(
                    "The server could not process this image; the failure was logged."
                )
                continue
            prepared.indices.append(idx)
            prepared.pixels.append(pixels)
            prepared.options.append(options)
        return prepared

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalized images -> (N, num_classes) probabilities."""
        with torch.inference_mode():
            return torch.softmax(self.predict_model(batch), dim=1)

    def top_k_answers(
        self, probabilities: torch.Tensor, options: list[RequestOptions]
    ) -> list[dict]:
        """(N, num_classes) probabilities -> one {class name: probability} per row, each
        with its own request's k."""
        return top_k_batch(probabilities, self.contract.class_names, [o.topk for o in options])

    def _explain_rows_or_fail(
        self,
        batch: torch.Tensor,
        probabilities: torch.Tensor,
        prepared: PreparedBatch,
        rows: list[int],
        context,
    ) -> list[dict]:
        """explain_rows, but a failure (e.g. CUDA out of memory on many IG steps) answers
        500 to the explained requests only: the batch's predictions still stand."""
        try:
            return self.explain_rows(batch, probabilities, prepared, rows)
        except MemoryError:
            raise  # host memory: TorchServe answers 507 for the batch
        except Exception:
            logger.exception("Explanations failed for %d requests", len(rows))
        error = errors.internal_error(
            "The explanation failed on the server and the failure was logged; "
            "fewer `steps` need less memory."
        )
        for row in rows:
            context.set_response_status(error.code, error.phrase, prepared.indices[row])
        return [error.to_body() for _ in rows]

    def explain_rows(
        self,
        batch: torch.Tensor,
        probabilities: torch.Tensor,
        prepared: PreparedBatch,
        rows: list[int],
    ) -> list[dict]:
        """Integrated gradients for the given rows, each for its own target: the requested
        class, else the predicted one. Rows asking for different step counts run apart."""
        predicted = probabilities.argmax(dim=1).tolist()
        targets = [
            prepared.options[r].target if prepared.options[r].target is not None else predicted[r]
            for r in rows
        ]
        answers: dict[int, dict] = {}
        for steps in sorted({prepared.options[r].steps for r in rows}):
            group = [
                (r, t)
                for r, t in zip(rows, targets, strict=True)
                if prepared.options[r].steps == steps
            ]
            group_rows = [r for r, _ in group]
            attributions, deltas = integrated_gradients(
                self.model, batch[group_rows], self.baseline, [t for _, t in group], steps
            )
            # Grayscale input: channels carry the same pixel, so their attributions add up.
            attributions_hw = attributions.sum(dim=1).cpu().numpy()  # (n, H, W)
            for i, (row, target) in enumerate(group):
                answers[row] = {
                    "target": target,
                    "target_name": self.contract.class_names[target],
                    "probability": round(float(probabilities[row, target]), PROBABILITY_DECIMALS),
                    "steps": steps,
                    "delta": float(deltas[i]),
                    "attributions": round_attributions(attributions_hw[i]),
                    "heatmap_png": heatmap_base64(prepared.pixels[row], attributions_hw[i]),
                }
        return [answers[r] for r in rows]

"""TorchServe handler for the FashionMNIST CNN: predictions and Captum explanations.

Thin on purpose: decoding lives in fashion_image, request parsing in fashion_request,
Open Inference Protocol (KServe v2) bodies in fashion_oip, top-k in fashion_predict,
explanations in fashion_explain, settings in fashion_settings, Prometheus metrics in
fashion_metrics (declared in monitoring/metrics.yaml).
TorchServe's loader wants exactly one class in this module.
handle() runs a batch as parse_requests -> logits -> top_k_answers or explain_rows:
BaseHandler's preprocess/postprocess/explain_handle are left unused, because here each
request of a batch carries its own options and may ask for a prediction or an explanation.

Requests (one image, or up to max_images_per_request in one JSON request, predicted
together; TorchServe batches concurrent requests itself):
    curl -T shirt.png          http://HOST:8080/predictions/fashion-cnn
    curl -F file=@shirt.jpg    http://HOST:8080/predictions/fashion-cnn       (any field name)
    curl -H 'Content-Type: application/json' -d '{"data": "<base64 or data: URL>"}' ...
    curl -H 'Content-Type: application/json' -d '{"instances": [{"data": "<base64>"}]}' \
         http://HOST:8080/v1/models/fashion-cnn:predict       (KServe v1; or several)
    curl -H 'Content-Type: application/json' -d '{"inputs": [{"name": "images",
         "datatype": "BYTES", "shape": [N], "data": ["<base64>", ...]}]}' \
         http://HOST:8080/v2/models/fashion-cnn/infer          (Open Inference Protocol)
Options, as headers (`-H 'X-Topk: 3' -H 'X-Target: Trouser'`, X-Invert, X-Steps, X-Method,
X-Sign, X-Heatmap), form fields (`-F topk=3`), fields of a JSON body or its KServe instance,
or OIP parameters (headers win): topk 1..10, target (index or class name; explanations),
invert true|false|auto, steps 1..max_ig_steps, method integrated_gradients|saliency|
input_x_gradient|occlusion, sign positive|all and heatmap true|false (explanations).
TorchServe 0.12 drops query strings (`?topk=3`).

Responses (one per image: a list for a `data` list, {"predictions": [...]} for several
KServe instances; an OIP response with typed output tensors, see fashion_oip):
    prediction   {"<class name>": probability, ...}   top-k, highest first
    explanation  {"method", "target", "target_name", "probability", "steps", "delta",
                  "attributions": 28x28 floats, "heatmap_png": base64 PNG, 340x168:
                  the input beside the attributions over it (null with heatmap=false)}
    refusal      {"code": 400|413|422, "type": "...", "message": "..."} with that HTTP status,
                 for that request only (context.set_response_status per index); an
                 unexpected failure of one request is a 500 of the same shape. A bad
                 image among several refuses its request, naming its "index". OIP
                 requests get {"error": "..."} with the same status.

Each request's own `explain: True` header (set by the frontend for /explanations,
:explain and /explain) picks explanation or prediction, so a batch may mix both; the
stock BaseHandler.handle looks at request 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

import fashion_errors as errors
import fashion_oip as oip
from fashion_contract import load_torchscript
from fashion_explain import (
    INTEGRATED_GRADIENTS,
    attribute,
    black_baseline,
    gradient_model,
    heatmap_base64,
    round_attributions,
)
from fashion_ig import PathThreads, ReluChain, cpu_has_native_bf16
from fashion_image import prepare_image_with_facts, to_batch_tensor
from fashion_memory import keep_freed_memory
from fashion_metrics import EXPLANATION, PREDICTION, BatchOutcome, HandlerMetrics
from fashion_predict import PROBABILITY_DECIMALS, inference_model, top_k_batch
from fashion_request import (
    OIP,
    OptionLimits,
    ParsedRequest,
    PreparedBatch,
    RequestOptions,
    is_oip_request,
    options_from_headers,
    parse_request,
    shape_answer,
)
from fashion_settings import HandlerSettings
from fashion_workers import SiblingWorkers, usable_cores

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
        memory = keep_freed_memory()

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")

        self.manifest = context.manifest
        self.model_name = self.manifest["model"].get("modelName", "")
        serialized_file = self.manifest["model"]["serializedFile"]
        self.model_pt_path = os.path.join(properties["model_dir"], serialized_file)
        self.model, self.contract = load_torchscript(self.model_pt_path, map_location=self.device)
        self.model.eval()
        # Predictions use a frozen, fused copy; explanations need the original's gradients.
        self.predict_model = inference_model(self.model, self.device)
        self.gradient_model = gradient_model(self.model, self.device)
        # Integrated gradients without autograd where the model is a plain chain of layers
        # (the FashionCNN is); None: Captum on the gradient copy.
        bf16 = self.settings.bf16_gradients and self.device.type == "cpu" and cpu_has_native_bf16()
        self.relu_chain = ReluChain.from_model(
            self.model, self.contract.input_shape, self.device, bf16_backward=bf16
        )
        # More threads than the cores this worker may use would only add hand-offs.
        threads = min(self.settings.explain_threads, usable_cores())
        self.path_threads = None
        if self.relu_chain is not None and self.device.type == "cpu" and threads > 1:
            self.path_threads = PathThreads(threads)
        self.siblings = SiblingWorkers()

        self.input_size = tuple(self.contract.input_shape[1:])  # (H, W)
        self.limits = OptionLimits(
            default_topk=min(self.settings.topk, self.contract.num_classes),
            default_steps=min(self.settings.ig_steps, self.settings.max_ig_steps),
            max_steps=self.settings.max_ig_steps,
            max_images=self.settings.max_images_per_request,
        )
        self.baseline = black_baseline(self.contract.mean, self.contract.std, self.input_size)
        self.baseline = self.baseline.to(self.device)
        # What OIP responses carry: the version TorchServe serves (the archive's, which
        # scripts/archive.sh takes from the contract).
        version = self.manifest["model"].get("modelVersion") or self.contract.version
        self.model_version = str(version)
        self.recorder = None
        if self.settings.metrics and getattr(context, "metrics", None) is not None:
            self.recorder = HandlerMetrics(
                context.metrics,
                self.contract,
                context.model_name,
                self.model_version,
            )
            self.recorder.record_model()
        self.initialized = True
        if self.relu_chain is None:
            ig_path = "Captum on a gradient copy (the model is no plain chain of layers)"
        else:
            ig_path = f"fashion_ig, {str(self.relu_chain.backward_dtype)[6:]} gradients"
        logger.info(
            "Loaded %s %s on %s (%s); integrated gradients: %s; %s",
            self.contract.name,
            self.contract.version,
            self.device,
            self.settings,
            ig_path,
            memory,
        )

    def handle(self, data: list[dict], context) -> list:
        if self._is_describe(data, context):
            return [self.describe_handle()]  # GET /models/{m}?customized=true
        start = time.perf_counter()
        responses: list = [None] * len(data)
        prepared = self.parse_requests(data, context)
        explain = [wants_explanation(context, idx) for idx in range(len(data))]
        probabilities = None
        failed = dict(prepared.refused)

        row_answers: list = []
        if prepared.indices:
            batch = to_batch_tensor(
                prepared.pixels, self.contract.mean, self.contract.std, self.device
            )
            logits = self.logits(batch)
            probabilities = torch.softmax(logits, dim=1)
            rows_to_explain = [row for row, idx in enumerate(prepared.indices) if explain[idx]]
            rows_to_predict = [row for row, idx in enumerate(prepared.indices) if not explain[idx]]
            row_answers = [None] * len(prepared.indices)
            if rows_to_predict:
                # Most batches are predictions only: then no copy of the probabilities.
                everyone = len(rows_to_predict) == len(prepared.indices)
                answers = self.top_k_answers(
                    probabilities if everyone else probabilities[rows_to_predict],
                    [prepared.options[r] for r in rows_to_predict],
                )
                for row, answer in zip(rows_to_predict, answers, strict=True):
                    row_answers[row] = answer
            if rows_to_explain:
                answers = self._explain_rows_or_fail(batch, logits, prepared, rows_to_explain)
                for row, answer in zip(rows_to_explain, answers, strict=True):
                    row_answers[row] = answer
            batch_fill = {"batch_requests": len(data), "batch_images": len(prepared.indices)}
            for idx, rows in prepared.rows_by_request().items():
                answers = [row_answers[row] for row in rows]
                error = next((a for a in answers if isinstance(a, errors.RequestError)), None)
                if error is not None:
                    failed[idx] = error
                    continue
                try:
                    responses[idx] = self.request_answer(
                        prepared.requests[idx], answers, probabilities, rows, explain[idx],
                        batch_fill,
                    )  # fmt: skip
                except errors.RequestError as refused:
                    failed[idx] = refused
            logger.debug(
                "Batch of %d requests, %d images (%d explained); %d refused",
                len(data),
                len(prepared.indices),
                len(rows_to_explain),
                len(failed),
            )

        for idx, error in failed.items():
            context.set_response_status(error.code, error.phrase, idx)
            parsed = prepared.requests.get(idx)
            if parsed is not None:
                in_oip = parsed.form == OIP
            else:
                in_oip = is_oip_request(data[idx], context.get_all_request_header(idx) or {})
            responses[idx] = oip.error_body(error) if in_oip else error.to_body()
        for idx in range(len(data)):
            context.set_response_content_type(idx, JSON)
            context.set_response_header(idx, VERSION_HEADER, self.model_version)
        if self.recorder is not None:
            seconds = time.perf_counter() - start
            self.record_metrics(seconds, explain, failed, prepared, row_answers, probabilities)
        return responses

    def request_answer(
        self,
        parsed: ParsedRequest,
        answers: list[dict],
        probabilities: torch.Tensor,
        rows: list[int],
        explain: bool,
        batch_fill: dict,
    ):
        """One request's response from its images' answers (in image order); `rows` are its
        images' rows of the batch's `probabilities`."""
        if parsed.form != OIP:
            return shape_answer(parsed, answers, explain)
        if explain:
            outputs = oip.explanation_outputs(answers)
        else:
            table = [
                [round(p, PROBABILITY_DECIMALS) for p in row]
                for row in probabilities[rows].tolist()
            ]
            outputs = oip.prediction_outputs(table, [list(answer) for answer in answers])
        return oip.infer_response(
            parsed.oip, self.model_name, self.model_version, outputs, batch_fill
        )

    @staticmethod
    def _is_describe(data: list[dict], context) -> bool:
        """The management API's describe: TorchServe sends it alone, with no body, under a
        `describe` header. A client can send that header with a prediction too: that
        request is answered as a prediction, and its batch keeps one answer a request."""
        described = context.get_request_header(0, "describe") == "True"
        return described and len(data) == 1 and not data[0]

    def describe_handle(self) -> str:
        """The model's Open Inference Protocol metadata (management API, ?customized=true)."""
        return json.dumps(
            oip.model_metadata(
                self.model_name,
                self.model_version,
                self.contract.input_shape,
                self.contract.num_classes,
                self.settings.max_images_per_request,
            )
        )

    def record_metrics(
        self,
        seconds: float,
        explain: list[bool],
        failed: dict[int, errors.RequestError],
        prepared: PreparedBatch,
        row_answers: list,
        probabilities: torch.Tensor | None,
    ) -> None:
        """The batch's latency, answers, refusals and inputs, to Prometheus (fashion_metrics).
        A failure here is logged and never fails the batch: its answers are ready."""
        try:
            kinds = [EXPLANATION if explained else PREDICTION for explained in explain]
            self.recorder.record_batch(
                BatchOutcome(
                    seconds,
                    kinds,
                    [(error.code, error.kind) for error in failed.values()],
                    row_answers,
                    prepared.indices,
                    prepared.pixels,
                    prepared.facts,
                    probabilities,
                )
            )
        except Exception:
            logger.exception("Recording the metrics of a batch failed")

    def parse_requests(self, data: list[dict], context) -> PreparedBatch:
        """Parse and decode each request, with options from its headers in `context`;
        a bad one is set aside with its error."""
        prepared = PreparedBatch()
        for idx, request in enumerate(data):
            headers = context.get_all_request_header(idx) or {}
            try:
                parsed = parse_request(
                    request,
                    self.contract.class_names,
                    self.limits,
                    self.settings.max_image_bytes,
                    options_from_headers(headers),
                    oip.binary_header_length(headers),
                )
                pixels, facts = [], []
                for index, image_bytes in enumerate(parsed.images):
                    try:
                        image_pixels, image_facts = prepare_image_with_facts(
                            image_bytes,
                            self.input_size,
                            parsed.options.invert,
                            self.settings.max_image_pixels,
                        )
                        pixels.append(image_pixels)
                        facts.append(image_facts)
                    except errors.RequestError as error:
                        if len(parsed.images) > 1:
                            raise error.for_image(index, len(parsed.images)) from None
                        raise
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
            prepared.requests[idx] = parsed
            prepared.indices.extend([idx] * len(pixels))
            prepared.pixels.extend(pixels)
            prepared.options.extend([parsed.options] * len(pixels))
            prepared.facts.extend(facts)
        return prepared

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalized images -> (N, num_classes) probabilities."""
        return torch.softmax(self.logits(batch), dim=1)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalized images -> (N, num_classes) logits."""
        with torch.inference_mode():
            return self.predict_model(batch)

    def top_k_answers(
        self, probabilities: torch.Tensor, options: list[RequestOptions]
    ) -> list[dict]:
        """(N, num_classes) probabilities -> one {class name: probability} per row, each
        with its own request's k."""
        return top_k_batch(probabilities, self.contract.class_names, [o.topk for o in options])

    def _explain_rows_or_fail(
        self,
        batch: torch.Tensor,
        logits: torch.Tensor,
        prepared: PreparedBatch,
        rows: list[int],
    ) -> list:
        """explain_rows, but a failure (e.g. CUDA out of memory on many IG steps) answers
        500 to the explained requests only (an error in place of each row's answer): the
        batch's predictions still stand."""
        try:
            return self.explain_rows(batch, logits, prepared, rows)
        except MemoryError:
            raise  # host memory: TorchServe answers 507 for the batch
        except Exception:
            logger.exception("Explanations failed for %d images", len(rows))
        error = errors.internal_error(
            "The explanation failed on the server and the failure was logged; "
            "fewer `steps` need less memory."
        )
        return [error for _ in rows]

    def explain_rows(
        self,
        batch: torch.Tensor,
        logits: torch.Tensor,
        prepared: PreparedBatch,
        rows: list[int],
    ) -> list[dict]:
        """Explanations for the given rows, each for its own target (the requested class,
        else the predicted one) by its own method. Rows that share a method and step count
        are explained together; integrated gradients split across the path threads while no
        other worker is running (then none competes for the cores)."""
        probabilities = torch.softmax(logits, dim=1)
        predicted = logits.argmax(dim=1).tolist()
        targets = {
            r: prepared.options[r].target
            if prepared.options[r].target is not None
            else predicted[r]
            for r in rows
        }
        answers: dict[int, dict] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for r in rows:
            options = prepared.options[r]
            steps = options.steps if options.method == INTEGRATED_GRADIENTS else 0
            groups.setdefault((options.method, steps), []).append(r)
        threads = self.path_threads
        if threads is not None:
            splits = any(method == INTEGRATED_GRADIENTS for method, _ in groups)
            threads = threads if splits and not self.siblings.any_running() else None
        for (method, steps), group in groups.items():
            attributions, deltas = attribute(
                method, self.gradient_model, self.predict_model, batch[group], self.baseline,
                [targets[r] for r in group], steps, self.relu_chain, logits[group],
                threads,
            )  # fmt: skip
            # Grayscale input: channels carry the same pixel, so their attributions add up.
            attributions_hw = attributions.sum(dim=1).float().cpu().numpy()  # (n, H, W)
            for i, row in enumerate(group):
                target = targets[row]
                answers[row] = {
                    "method": method,
                    "target": target,
                    "target_name": self.contract.class_names[target],
                    "probability": round(float(probabilities[row, target]), PROBABILITY_DECIMALS),
                    "steps": steps or None,
                    "delta": None if deltas is None else float(deltas[i]),
                    "attributions": round_attributions(attributions_hw[i]),
                    "heatmap_png": heatmap_base64(
                        prepared.pixels[row], attributions_hw[i], prepared.options[row].sign
                    )
                    if prepared.options[row].heatmap
                    else None,
                }
        return [answers[r] for r in rows]

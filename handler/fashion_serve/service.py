"""The serving core: a batch of requests in, one answer (status and JSON body) per request out.

No server is imported here. A runtime (torchserve_runtime, kserve_runtime) turns its own
requests into `Request`s, calls `FashionService.run` once per batch and maps the `Answer`s
back onto its responses; everything between is this module's:

    parse each request (request, oip) and decode its images (image)
    -> one forward pass for the whole batch (predict)
    -> top-k answers for predictions, attributions and heatmaps for explanations (explain, ig)
    -> each request's answer in its own shape (plain, list, KServe v1, OIP), or its 4xx

A bad request is answered with its error and never spoils the others of its batch. What
each answer looks like is in docs/api.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from fashion_serve import errors, oip
from fashion_serve.contract import load_torchscript
from fashion_serve.explain import (
    attribute,
    black_baseline,
    gradient_model,
    heatmap_base64,
    round_attributions,
    warm_captum,
)
from fashion_serve.ig import PathThreads, ReluChain, cpu_has_native_bf16
from fashion_serve.image import prepare_image_with_facts, to_batch_tensor
from fashion_serve.memory import keep_freed_memory
from fashion_serve.metrics import EXPLANATION, PREDICTION, BatchOutcome, HandlerMetrics
from fashion_serve.options import AUTO_STEPS, INTEGRATED_GRADIENTS, OptionLimits, RequestOptions
from fashion_serve.predict import PROBABILITY_DECIMALS, inference_model, top_k_batch
from fashion_serve.request import (
    OIP,
    ParsedRequest,
    PreparedBatch,
    is_oip_request,
    options_from_headers,
    parse_request,
    shape_answer,
)
from fashion_serve.settings import HandlerSettings
from fashion_serve.workers import SiblingWorkers, usable_cores

logger = logging.getLogger(__name__)

OK = 200


@dataclass(frozen=True)
class Request:
    """One request as a runtime hands it over.

    `inputs` are its named inputs in TorchServe's shape: {"body": bytes | dict | str} for a
    raw or JSON body, one entry per field for a form. `headers` carry the X-* options and
    the OIP binary-extension header; `explain` says which endpoint it came through.
    """

    inputs: Mapping
    headers: Mapping = field(default_factory=dict)
    explain: bool = False


@dataclass(frozen=True)
class Answer:
    """One request's answer: a JSON-able body and its HTTP status (200, or the 4xx/500 of
    its error)."""

    body: object
    status: int = OK
    phrase: str = "OK"
    error: errors.RequestError | None = None


class FashionService:
    """The model, its contract and settings, and the batch pipeline over them."""

    def __init__(
        self,
        model_file,
        settings: HandlerSettings,
        device: torch.device,
        model_name: str,
        model_version: str | None = None,
        emit_metric: Callable | None = None,
    ) -> None:
        """`model_file`: the exported TorchScript (a path or a file object). `model_version`
        defaults to the contract's. `emit_metric(spec, value, label_values)` is the
        runtime's way to publish a metric (metrics.HandlerMetrics); None: no metrics."""
        self.settings = settings
        # One intra-op thread per worker: torch's default (one per core) spins between ops
        # and fights the other workers and the server for the same cores.
        torch.set_num_threads(settings.torch_threads)
        self.memory = keep_freed_memory()
        self.device = device
        self.model_name = model_name
        self.model, self.contract = load_torchscript(model_file, map_location=device)
        self.model.eval()
        # Predictions use a frozen, fused copy; explanations need the original's gradients.
        self.predict_model = inference_model(self.model, device)
        self.gradient_model = gradient_model(self.model, device)
        # Integrated gradients without autograd where the model is a plain chain of layers
        # (the FashionCNN is); None: Captum on the gradient copy.
        bf16 = settings.bf16_gradients and device.type == "cpu" and cpu_has_native_bf16()
        self.relu_chain = ReluChain.from_model(
            self.model, self.contract.input_shape, device, bf16_backward=bf16
        )
        # More threads than the cores this worker may use would only add hand-offs.
        threads = min(settings.explain_threads, usable_cores())
        self.path_threads = None
        if self.relu_chain is not None and device.type == "cpu" and threads > 1:
            self.path_threads = PathThreads(threads)
        self.siblings = SiblingWorkers()

        self.input_size = tuple(self.contract.input_shape[1:])  # (H, W)
        self.limits = OptionLimits(
            default_topk=min(settings.topk, self.contract.num_classes),
            default_steps=settings.ig_steps
            if settings.ig_steps == AUTO_STEPS
            else min(settings.ig_steps, settings.max_ig_steps),
            max_steps=settings.max_ig_steps,
            default_tolerance=settings.delta_tolerance,
            max_images=settings.max_images_per_request,
        )
        self.baseline = black_baseline(self.contract.mean, self.contract.std, self.input_size)
        self.baseline = self.baseline.to(device)
        self.model_version = str(model_version or self.contract.version)
        self.recorder = None
        if settings.metrics and emit_metric is not None:
            self.recorder = HandlerMetrics(emit_metric, self.contract, self.model_version)
            self.recorder.record_model()
        if self.relu_chain is None:
            ig_path = "Captum on a gradient copy (the model is no plain chain of layers)"
        else:
            ig_path = f"fashion_serve.ig, {str(self.relu_chain.backward_dtype)[6:]} gradients"
        logger.info(
            "Loaded %s %s on %s (%s); integrated gradients: %s; %s",
            self.contract.name,
            self.contract.version,
            device,
            settings,
            ig_path,
            self.memory,
        )
        warm_captum()

    def metadata(self) -> dict:
        """The model's Open Inference Protocol metadata (GET /v2/models/{m})."""
        return oip.model_metadata(
            self.model_name,
            self.model_version,
            self.contract.input_shape,
            self.contract.num_classes,
            self.settings.max_images_per_request,
        )

    def run(self, requests: list[Request]) -> list[Answer]:
        """Answer a batch: one forward pass for every image of its good requests."""
        start = time.perf_counter()
        bodies: list = [None] * len(requests)
        prepared = self.parse_requests(requests)
        explain = [request.explain for request in requests]
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
            batch_fill = {"batch_requests": len(requests), "batch_images": len(prepared.indices)}
            for idx, rows in prepared.rows_by_request().items():
                answers = [row_answers[row] for row in rows]
                error = next((a for a in answers if isinstance(a, errors.RequestError)), None)
                if error is not None:
                    failed[idx] = error
                    continue
                try:
                    bodies[idx] = self.request_answer(
                        prepared.requests[idx], answers, probabilities, rows, explain[idx],
                        batch_fill,
                    )  # fmt: skip
                except errors.RequestError as refused:
                    failed[idx] = refused
            logger.debug(
                "Batch of %d requests, %d images (%d explained); %d refused",
                len(requests),
                len(prepared.indices),
                len(rows_to_explain),
                len(failed),
            )

        results = [Answer(body) for body in bodies]
        for idx, error in failed.items():
            parsed = prepared.requests.get(idx)
            if parsed is not None:
                in_oip = parsed.form == OIP
            else:
                in_oip = is_oip_request(requests[idx].inputs, requests[idx].headers)
            body = oip.error_body(error) if in_oip else error.to_body()
            results[idx] = Answer(body, error.code, error.phrase, error)
        if self.recorder is not None:
            seconds = time.perf_counter() - start
            self.record_metrics(seconds, explain, failed, prepared, row_answers, probabilities)
        return results

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

    def record_metrics(
        self,
        seconds: float,
        explain: list[bool],
        failed: dict[int, errors.RequestError],
        prepared: PreparedBatch,
        row_answers: list,
        probabilities: torch.Tensor | None,
    ) -> None:
        """The batch's latency, answers, refusals and inputs, to Prometheus (metrics).
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

    def parse_requests(self, requests: list[Request]) -> PreparedBatch:
        """Parse and decode each request; a bad one is set aside with its error."""
        prepared = PreparedBatch()
        for idx, request in enumerate(requests):
            try:
                parsed = parse_request(
                    request.inputs,
                    self.contract.class_names,
                    self.limits,
                    self.settings.max_image_bytes,
                    options_from_headers(request.headers),
                    oip.binary_header_length(request.headers),
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
            raise  # host memory: the runtime answers the batch with its own error
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
        groups: dict[tuple[str, int | str, float], list[int]] = {}
        for r in rows:
            options = prepared.options[r]
            ig = options.method == INTEGRATED_GRADIENTS
            steps = options.steps if ig else 0
            tolerance = options.delta_tolerance if steps == AUTO_STEPS else 0.0
            groups.setdefault((options.method, steps, tolerance), []).append(r)
        threads = self.path_threads
        if threads is not None:
            splits = any(method == INTEGRATED_GRADIENTS for method, _, _ in groups)
            threads = threads if splits and not self.siblings.any_running() else None
        for (method, steps, tolerance), group in groups.items():
            attributions, deltas, used = attribute(
                method, self.gradient_model, self.predict_model, batch[group], self.baseline,
                [targets[r] for r in group], steps, self.relu_chain, logits[group],
                threads, tolerance, self.limits.max_steps,
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
                    "steps": None if used is None else int(used[i]),
                    "delta": None if deltas is None else float(deltas[i]),
                    "attributions": round_attributions(attributions_hw[i]),
                    "heatmap_png": heatmap_base64(
                        prepared.pixels[row], attributions_hw[i], prepared.options[row].sign
                    )
                    if prepared.options[row].heatmap
                    else None,
                }
                if steps == AUTO_STEPS:  # the guarantee asked for, and whether it was met
                    answers[row]["delta_tolerance"] = tolerance
                    answers[row]["converged"] = abs(float(deltas[i])) <= tolerance
        return [answers[r] for r in rows]

"""The KServe runtime: KServe's Python model server (`kserve` on PyPI) over the same core.

One worker process (of the several kserve_server starts, one per core) runs:
- `FashionKServeModel`, a `kserve.Model` whose predict/explain hand each request to the
  core through a `Batcher` (a lone request runs at once; requests that arrive meanwhile form
  the next batch);
- REST on the HTTP socket the supervisor bound (uvicorn, FastAPI): KServe's own health,
  readiness and metadata routes, and in front of them the inference routes, which pass the
  raw body to the core exactly as TorchServe does, so both runtimes give the same answers
  and the same 4xx: /predictions/{m} and /explanations/{m} (TorchServe's API, `curl -T`),
  KServe v1 /v1/models/{m}:predict and :explain, OIP /v2/models/{m}/infer and /explain
  (JSON or the binary-data extension);
- OIP gRPC (`inference.GRPCInferenceService`, KServe's servicer) on the gRPC port, shared by
  the workers (SO_REUSEPORT): ModelInfer with BYTES images in typed contents or
  raw_input_contents; the request parameter `explain: true` asks for an explanation;
- bearer-token checks on both (key_file.json, written by the supervisor), a request-size cap
  checked before anything is decoded, and a bound on the headers (kserve_gates), and
  /metrics summed over every worker process with the same names as on TorchServe
  (kserve_metrics).

docs/api.md says what each route answers; docs/deployment.md how to start it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl

import grpc
import orjson
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from kserve import Model
from kserve.errors import (
    ModelNotReady,
    generic_exception_handler,
    model_not_ready_handler,
)
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest

from fashion_serve import errors, oip
from fashion_serve.archive import Archive, read_archive
from fashion_serve.batcher import Batcher
from fashion_serve.kserve_gates import JSON, BoundedHeaders, Gate, GrpcGate, read_key
from fashion_serve.kserve_metrics import PrometheusMetrics, ServerCounters, metrics_text
from fashion_serve.service import OK, Answer, FashionService, Request
from fashion_serve.settings import HandlerSettings

logger = logging.getLogger(__name__)

VERSION_HEADER = "X-Model-Version"  # as on TorchServe: which version answered


class Refused(Exception):
    """A request the core answered with an error status (carried to the gRPC status)."""

    def __init__(self, answer: Answer) -> None:
        body = answer.body if isinstance(answer.body, Mapping) else {}
        super().__init__(body.get("message") or body.get("error") or answer.phrase)
        self.answer = answer


class FashionKServeModel(Model):
    """A kserve.Model over the serving core; the REST routes and gRPC both land here."""

    def __init__(self, archive: Archive, max_batch_size: int, metrics: bool = True) -> None:
        super().__init__(archive.model_name)
        self.archive = archive
        self.max_batch_size = max_batch_size
        self.metrics = metrics
        self.service: FashionService | None = None
        self.batcher: Batcher | None = None
        self.counters: ServerCounters | None = None

    def load(self) -> bool:
        settings = HandlerSettings.from_model_yaml(self.archive.config)
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self.service = FashionService(
            self.archive.model_file(),
            settings,
            device,
            self.name,
            self.archive.model_version or None,
            PrometheusMetrics(self.name) if self.metrics else None,
        )
        self.batcher = Batcher(self.service.run, self.max_batch_size)
        self.counters = ServerCounters(self.name, self.service.model_version)
        self.ready = True
        return self.ready

    async def answer(self, request: Request) -> Answer:
        self.counters.received.inc()
        return await self.batcher.submit(request)

    async def predict(self, payload, headers=None):
        return await self._infer(payload, headers, explain=False)

    async def explain(self, payload, headers=None):
        return await self._infer(payload, headers, explain=True)

    async def _infer(self, payload, headers, explain: bool):
        """gRPC's InferRequest (and a dict, should a KServe route reach here) -> the core."""
        if not isinstance(payload, InferRequest):
            answer = await self.answer(Request({"body": payload}, headers or {}, explain))
            if answer.status != OK:
                raise Refused(answer)
            return answer.body
        try:
            body = infer_request_body(payload)
        except errors.RequestError as error:
            self.counters.received.inc()
            answer = Answer(oip.error_body(error), error.code, error.phrase, error)
        else:
            explain = explain or _is_true(body.get("parameters", {}).get("explain"))
            answer = await self.answer(Request({"body": body}, headers or {}, explain))
        self.counters.responded(answer.status)  # gRPC: no HTTP status, the same classes
        if answer.status != OK:
            raise Refused(answer)
        return infer_response(answer.body)

    def get_input_types(self) -> list[dict]:
        return self.service.metadata()["inputs"]

    def get_output_types(self) -> list[dict]:
        return self.service.metadata()["outputs"]


def _is_true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def infer_request_body(request: InferRequest) -> dict:
    """KServe's decoded OIP request -> the JSON-shaped body the core parses (fashion_serve.
    oip), its BYTES elements as the bytes gRPC carried (typed contents or raw_input_contents)."""
    parameters = request.parameters or {}
    if request.from_grpc:
        parameters = to_http_parameters(parameters)
    inputs = []
    for tensor in request.inputs:
        data = tensor.data
        if tensor._raw_data is not None:  # raw_input_contents: each element length-prefixed
            data = oip.bytes_elements(tensor._raw_data, tensor.name)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": [int(d) for d in tensor.shape],
                "parameters": to_http_parameters(tensor.parameters or {}),
                "data": list(data) if data is not None else None,
            }
        )
    body = {"inputs": inputs, "parameters": dict(parameters)}
    if request.id:
        body["id"] = request.id
    if request.request_outputs:
        body["outputs"] = [{"name": output.name} for output in request.request_outputs]
    return body


def infer_response(body: Mapping) -> InferResponse:
    """The core's OIP response object -> KServe's InferResponse, its tensors to be sent as
    raw_output_contents, as Triton itself sends them (tritonclient 2.73 cannot read typed
    BYTES contents under numpy 2)."""
    outputs = [
        InferOutput(tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"])
        for tensor in body["outputs"]
    ]
    parameters = {k: v for k, v in (body.get("parameters") or {}).items()}
    return InferResponse(
        response_id=body.get("id") or "",
        model_name=body["model_name"],
        model_version=body.get("model_version"),
        infer_outputs=outputs,
        parameters=parameters,
        use_binary_outputs=True,
    )


# --- metrics ---------------------------------------------------------------------------------


# --- REST ------------------------------------------------------------------------------------


async def request_inputs(request: HttpRequest) -> dict:
    """An HTTP request's named inputs as TorchServe's worker hands them to a handler: a form
    as one entry per field (files as bytes), JSON as its object, text as str, else bytes.
    Unlike TorchServe (500), a binary body labelled a urlencoded form is taken as the body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body = await request.body()
        try:  # `curl --data-binary @shirt.png` labels the image's bytes a form: take them as sent
            text = body.decode("ascii")
        except UnicodeDecodeError:
            return {"body": body}
        return dict(parse_qsl(text, keep_blank_values=True))
    if content_type == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as exc:  # starlette's parser: malformed multipart or encoding
            raise errors.invalid_image(f"The form could not be read: {exc}.") from exc
        fields = {}
        for name, value in form.multi_items():
            fields[name] = await value.read() if hasattr(value, "read") else value
        return fields
    body = await request.body()
    if content_type == JSON:
        try:
            return {"body": json.loads(body)}
        except (ValueError, RecursionError):
            return {"body": body}  # the core says what is wrong with it
    if content_type.startswith("text/"):
        try:
            return {"body": body.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"body": body}


def kserve_plumbing(model: FashionKServeModel) -> tuple[DataPlane, ModelRepositoryExtension]:
    """KServe's dataplane and repository extension over this one model, for REST and gRPC."""
    repository = ModelRepository()
    repository.update(model)
    return DataPlane(model_registry=repository), ModelRepositoryExtension(model_registry=repository)


def build_app(model: FashionKServeModel, key: str | None, max_request_bytes: int) -> Gate:
    dataplane, extension = kserve_plumbing(model)
    app = FastAPI(title="fashion-serve (KServe runtime)", docs_url=None, redoc_url=None)

    async def answer(request: HttpRequest, model_name: str, explain: bool) -> Response:
        if model_name != model.name:
            error = {"code": 404, "type": "ModelNotFoundException",
                     "message": f"Model not found: {errors.shown(model_name)}"}  # fmt: skip
            return Response(orjson.dumps(error), 404, media_type=JSON)
        if not model.ready:
            raise ModelNotReady(model_name)
        try:
            inputs = await request_inputs(request)
        except errors.RequestError as error:
            result = Answer(error.to_body(), error.code, error.phrase, error)
        else:
            result = await model.answer(Request(inputs, request.headers, explain))
        headers = {VERSION_HEADER: model.service.model_version}
        # orjson (kserve's own JSON library): an explanation's 28x28 floats and heatmap in
        # about 40 us, against about 0.7 ms for json.dumps.
        return Response(orjson.dumps(result.body), result.status, headers, media_type=JSON)

    def route(path: str, explain: bool, methods: list[str]) -> None:
        # A plain Starlette route: the body goes to the core as bytes, so FastAPI's request
        # validation and dependency solving would only add time to every request.
        async def endpoint(request: HttpRequest) -> Response:
            return await answer(request, request.path_params["model_name"], explain)

        app.add_route(path, endpoint, methods=methods, include_in_schema=False)

    # TorchServe's own API takes PUT too: `curl -T file` sends one.
    for path, explain, methods in (
        ("/predictions/{model_name}", False, ["POST", "PUT"]),
        ("/explanations/{model_name}", True, ["POST", "PUT"]),
        ("/v1/models/{model_name}:predict", False, ["POST"]),
        ("/v1/models/{model_name}:explain", True, ["POST"]),
        ("/v2/models/{model_name}/infer", False, ["POST"]),
        ("/v2/models/{model_name}/explain", True, ["POST"]),
    ):
        route(path, explain, methods)

    async def metadata(model_name: str) -> Response:
        if model_name != model.name:
            return Response(orjson.dumps({"error": f"Model {model_name} not found"}), 404)
        return Response(orjson.dumps(model.service.metadata()), media_type=JSON)

    async def metrics() -> Response:
        return Response(metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/", dataplane.live, methods=["GET"])
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    app.add_exception_handler(ModelNotReady, model_not_ready_handler)
    app.add_exception_handler(StarletteHTTPException, route_error)
    app.add_exception_handler(Exception, generic_exception_handler)
    return Gate(app, key, max_request_bytes, model.counters)


async def route_error(request: HttpRequest, error: StarletteHTTPException) -> Response:
    """A path or method no route answers: the project's JSON error, not Starlette's."""
    kinds = {404: "NotFound", 405: "MethodNotAllowed"}
    body = {"code": error.status_code, "type": kinds.get(error.status_code, "HTTPError"),
            "message": f"{request.method} {errors.shown(request.url.path)}: {error.detail}; "
            "docs/api.md lists the routes."}  # fmt: skip
    return Response(orjson.dumps(body), error.status_code, getattr(error, "headers", None),
                    media_type=JSON)  # fmt: skip


# --- gRPC ------------------------------------------------------------------------------------


class RefusalToStatus(ExceptionToStatusInterceptor):
    """The core's refusals as gRPC statuses (the message kept); the rest as KServe maps them."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, Refused):
            status = ex.answer.status
            if status == errors.PAYLOAD_TOO_LARGE:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
            elif status >= errors.INTERNAL_ERROR:
                code = grpc.StatusCode.INTERNAL
            else:
                code = grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def build_grpc(model: FashionKServeModel, key: str | None, max_request_bytes: int):
    dataplane, extension = kserve_plumbing(model)
    server = grpc.aio.server(
        interceptors=[GrpcGate(key), RefusalToStatus()],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 1),  # every worker listens on the same port
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, extension), server
    )
    return server


# --- one worker process ----------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """This worker's own listening socket on the shared port. The kernel spreads new
    connections over the workers' sockets (SO_REUSEPORT); one socket shared by all was
    accepted from mostly by one worker, whose event loop is free while its batch runs."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


async def serve(args: argparse.Namespace) -> None:
    model = FashionKServeModel(read_archive(args.archive), args.batch_size)
    model.load()
    key = read_key(args.key_file)
    app = build_app(model, key, args.max_request_bytes)
    grpc_server = build_grpc(model, key, args.max_request_bytes)
    grpc_server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    await grpc_server.start()
    http = uvicorn.Server(
        uvicorn.Config(
            app, http=BoundedHeaders, log_config=None, access_log=False, lifespan="off",
            timeout_keep_alive=65,
        )
    )  # fmt: skip
    logger.info("Worker %d serving %s %s", os.getpid(), model.name, model.service.model_version)
    try:
        await http.serve(sockets=[listening_socket(args.host, args.http_port)])
    finally:
        await grpc_server.stop(grace=5)
        model.batcher.close()


def worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="One worker of the KServe runtime: python -m fashion_serve.kserve_server "
        "starts them."
    )
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-request-bytes", type=int, required=True)
    parser.add_argument("--key-file", type=Path, default=None, help="none: no token checks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    try:
        import uvloop  # uvicorn's own choice of event loop where installed (kserve has it)
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    worker_main()

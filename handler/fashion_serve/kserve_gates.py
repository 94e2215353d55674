"""What a request to the KServe runtime passes before the core (fashion_serve.kserve_runtime):

- REST: `Gate`, ASGI middleware in front of every route: the bearer token (the inference key
  of key_file.json), KServe's model repository off, and the request size, checked before any
  route decodes the body; `BoundedHeaders`, uvicorn's httptools protocol with a bound on the
  request line and headers (httptools has none);
- gRPC: `GrpcGate`, the same token and the repository off, as an interceptor.

Liveness, readiness and /metrics need no token, as on TorchServe.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import grpc
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fashion_serve import errors

JSON = "application/json"
# No token needed here: liveness and readiness probes, and Prometheus (as TorchServe's
# /metrics). Everything else needs the inference key.
OPEN_PATHS = ("/", "/metrics", "/v2/health/live", "/v2/health/ready")
GRPC_SERVICE = "/inference.GRPCInferenceService/"
OPEN_GRPC_METHODS = (f"{GRPC_SERVICE}ServerLive", f"{GRPC_SERVICE}ServerReady")
# KServe's model repository (load, unload) acts on the one worker that answers and would
# leave the others serving: off, on REST and gRPC. One archive per start.
REPOSITORY_PATH = "/v2/repository"
REPOSITORY_GRPC_METHODS = (f"{GRPC_SERVICE}RepositoryModelLoad",
                           f"{GRPC_SERVICE}RepositoryModelUnload")  # fmt: skip
REPOSITORY_OFF = (
    "KServe's model repository is off in this runtime: it serves the one archive it started "
    "with in every worker (stop, archive and start to serve another)."
)
# The request line and headers, checked as they arrive (httptools has no limit of its own).
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


# --- REST ------------------------------------------------------------------------------------


class Gate:
    """ASGI middleware in front of every route: the bearer token, then the request size
    (the body is read here, at most `max_request_bytes`, before any route decodes it)."""

    def __init__(self, app, key: str | None, max_request_bytes: int, counters=None) -> None:
        self.app = app
        self.key = key  # the inference key; None: token authorization is off
        self.max_request_bytes = max_request_bytes
        self.counters = counters  # ServerCounters, told every status but the open paths'

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.counters is not None and path not in OPEN_PATHS:
            send = self._counting(send)
        checked = self.key is not None and path not in OPEN_PATHS
        if checked and not hmac.compare_digest(_bearer(scope).encode(), self.key.encode()):
            refusal = {"code": 401, "type": "Unauthorized",
                       "message": "Token authorization failed: send 'Authorization: Bearer "
                       "<key>' with the inference key of key_file.json."}  # fmt: skip
            return await _send_json(send, 401, refusal, [(b"www-authenticate", b"Bearer")])
        if path == REPOSITORY_PATH or path.startswith(REPOSITORY_PATH + "/"):
            error = {"code": 405, "type": "MethodNotAllowed", "message": REPOSITORY_OFF}
            return await _send_json(send, 405, error)
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            return await _send_json(send, 413, self._too_large(int(declared)))
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_request_bytes:
                return await _send_json(send, 413, self._too_large(len(body), "at least "))
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # the app waits for a disconnect once the body is read
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    def _counting(self, send):
        async def counted(message):
            if message["type"] == "http.response.start":
                self.counters.responded(message["status"])
            await send(message)

        return counted

    def _too_large(self, size: int, qualifier: str = "") -> dict:
        return errors.payload_too_large(
            f"The request body is {qualifier}{size:,} bytes; at most "
            f"{self.max_request_bytes:,} are accepted."
        ).to_body()


def _header(scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _bearer(scope) -> str:
    value = _header(scope, b"authorization")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _send_json(send, status: int, body, headers=()) -> None:
    content = orjson.dumps(body)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", JSON.encode()),
                    (b"content-length", str(len(content)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": content})


class _HeadersTooLarge(Exception):
    pass


class BoundedHeaders(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request line and headers, which
    httptools does not have (a 32 MiB header was read and answered, before the token check):
    over MAX_HEADER_BYTES or MAX_HEADERS the request gets a 431 and the connection closes.
    Bytes are counted raw, up to the blank line that ends the headers, before the parser sees
    them (so a header still arriving never grows past the bound), and exactly once it has
    them."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_headers()

    def _start_headers(self) -> None:
        self._in_headers, self._raw_bytes, self._header_bytes = True, 0, 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_headers()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_bytes > MAX_HEADER_BYTES or len(self.headers) > MAX_HEADERS:
            self._refuse()
            raise _HeadersTooLarge  # stops the parser: no request is started
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            end = data.find(b"\r\n\r\n")  # the body may follow in the same read
            self._raw_bytes += len(data) if end < 0 else end + 4
            if self._raw_bytes > MAX_HEADER_BYTES:
                return self._refuse()
        return super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # after a 431 the parser's stop is no second error
            super().send_400_response(msg)

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        body = orjson.dumps({
            "code": 431, "type": "RequestHeaderFieldsTooLarge",
            "message": f"The request line and headers exceed {MAX_HEADER_BYTES:,} bytes or "
            f"{MAX_HEADERS} headers; send the options as form or JSON fields.",
        })  # fmt: skip
        head = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json"
                b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body))  # fmt: skip
        self.transport.write(head + body)
        self.transport.close()


# --- gRPC ------------------------------------------------------------------------------------


class GrpcGate(grpc.aio.ServerInterceptor):
    """gRPC's Gate: `authorization: Bearer <inference key>` metadata on every call but the
    health checks (`key` None: authorization off), and the model repository off."""

    def __init__(self, key: str | None) -> None:
        self.key = None if key is None else key.encode()

    async def intercept_service(self, continuation, details):
        if details.method in OPEN_GRPC_METHODS:
            return await continuation(details)
        if self.key is not None:
            metadata = {key: value for key, value in details.invocation_metadata or ()}
            scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.key
            ):
                return _refusal(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "send 'authorization: Bearer <key>' metadata with the inference key",
                )
        if details.method in REPOSITORY_GRPC_METHODS:
            return _refusal(grpc.StatusCode.UNIMPLEMENTED, REPOSITORY_OFF)
        return await continuation(details)


def _refusal(code: grpc.StatusCode, message: str):
    async def refuse(request, context):
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


def read_key(key_file: Path | None) -> str | None:
    """The inference key of key_file.json; None: authorization off."""
    if key_file is None:
        return None
    return json.loads(key_file.read_text())["inference"]["key"]

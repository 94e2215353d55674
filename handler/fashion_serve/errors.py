"""Errors a client caused, each with the HTTP status and the JSON body it gets back.

Only the request at fault gets the error: the handler catches RequestError per request,
so the other requests of a TorchServe batch still get their answers.
"""

from __future__ import annotations

BAD_REQUEST = 400
PAYLOAD_TOO_LARGE = 413
UNPROCESSABLE = 422
INTERNAL_ERROR = 500
SHOWN_CHARS = 40  # of a refused value, quoted in an error message

_PHRASES = {
    BAD_REQUEST: "Bad Request",
    PAYLOAD_TOO_LARGE: "Payload Too Large",
    UNPROCESSABLE: "Unprocessable Entity",
    INTERNAL_ERROR: "Internal Server Error",
}


def shown(text: str) -> str:
    """`text` to quote in an error message, shortened: a request may send kilobytes."""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


class RequestError(Exception):
    """A refused request: `kind` names the problem for programs, `message` for people."""

    def __init__(self, code: int, kind: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message
        self.index = index  # which image of a several-image request, when it was one

    @property
    def phrase(self) -> str:
        return _PHRASES.get(self.code, "Client Error")

    def to_body(self) -> dict:
        body = {"code": self.code, "type": self.kind, "message": self.message}
        if self.index is not None:
            body["index"] = self.index
        return body

    def for_image(self, index: int, count: int) -> RequestError:
        """This error as image `index` (0-based) of a request holding `count` images."""
        return RequestError(
            self.code, self.kind, f"Image at index {index} (of {count}): {self.message}", index
        )


def empty_request(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, "EmptyRequest", message)


def invalid_image(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, "InvalidImage", message)


def invalid_json(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, "InvalidJSON", message)


def invalid_base64(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, "InvalidBase64", message)


def invalid_parameter(message: str) -> RequestError:
    return RequestError(BAD_REQUEST, "InvalidParameter", message)


def parameter_out_of_range(message: str) -> RequestError:
    return RequestError(UNPROCESSABLE, "ParameterOutOfRange", message)


def unknown_target(message: str) -> RequestError:
    return RequestError(UNPROCESSABLE, "UnknownTarget", message)


def too_many_instances(message: str) -> RequestError:
    return RequestError(UNPROCESSABLE, "TooManyInstances", message)


def image_too_large(message: str) -> RequestError:
    return RequestError(PAYLOAD_TOO_LARGE, "ImageTooLarge", message)


def payload_too_large(message: str) -> RequestError:
    return RequestError(PAYLOAD_TOO_LARGE, "PayloadTooLarge", message)


def internal_error(message: str) -> RequestError:
    """Not the client's fault; used so one request's surprise does not fail its batch."""
    return RequestError(INTERNAL_ERROR, "InternalError", message)

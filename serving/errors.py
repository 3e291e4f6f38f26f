"""Errors with a canonical status code, and TF Serving's mapping of those codes onto HTTP statuses.

Every failure a client can see is a :class:`ServingError`: the gRPC front end aborts the call with its code and
message, the REST front end answers ``{"error": message}`` with the HTTP status TF Serving uses for that code
(``tensorflow_serving/model_servers/http_server.cc``, ``ToHTTPStatusCode``).
"""

from __future__ import annotations

from functools import partial

import grpc

Code = grpc.StatusCode

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request failure with a canonical code (``grpc.StatusCode``) and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def code_from_value(value: int) -> grpc.StatusCode:
    """The StatusCode for a numeric canonical code (``tensorflow.error.Code`` uses the same numbers)."""
    return _BY_VALUE.get(int(value), Code.UNKNOWN)


# One constructor per code the server raises: ``invalid_argument("...")`` is ``ServingError(INVALID_ARGUMENT, "...")``.
invalid_argument = partial(ServingError, Code.INVALID_ARGUMENT)
not_found = partial(ServingError, Code.NOT_FOUND)
failed_precondition = partial(ServingError, Code.FAILED_PRECONDITION)
unavailable = partial(ServingError, Code.UNAVAILABLE)
unimplemented = partial(ServingError, Code.UNIMPLEMENTED)


def from_exception(error: BaseException) -> ServingError:
    """A ServingError for anything raised while serving: TensorFlow's OpErrors keep their canonical code."""
    if isinstance(error, ServingError):
        return error
    code = getattr(error, "error_code", None)  # tf.errors.OpError without importing TensorFlow here
    if isinstance(code, int):
        message = getattr(error, "message", None) or str(error)
        return ServingError(code_from_value(code), message.strip())
    return ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}")

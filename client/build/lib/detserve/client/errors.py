"""Exceptions raised by the client, the same for gRPC and REST.

Every exception carries the server's own message (``.message``), the transport's status (``.code``: a
gRPC status name such as ``"INVALID_ARGUMENT"`` or an HTTP status such as ``"HTTP 400"``) and the
server address (``.server``).
"""

from __future__ import annotations

import grpc

__all__ = [
    "DetserveClientError",
    "ModelNotFound",
    "InvalidInput",
    "ServerUnavailable",
    "DeadlineExceeded",
    "from_grpc_error",
    "from_http_error",
]


class DetserveClientError(Exception):
    """Base class: a request to the model server failed."""

    retryable = False
    retry_after: float | None = None  # seconds, from an HTTP Retry-After header
    attempts: int = 1  # how many times the client tried before raising

    def __init__(self, message: str, *, code: str | None = None, server: str | None = None):
        self.message = message
        self.code = code
        self.server = server
        where = f" ({code} from {server})" if code and server else f" ({code})" if code else ""
        super().__init__(f"{message}{where}")


class ModelNotFound(DetserveClientError):
    """The server does not serve this model, version, label or signature (NOT_FOUND / HTTP 404)."""


class InvalidInput(DetserveClientError):
    """The server rejected the request (INVALID_ARGUMENT / FAILED_PRECONDITION / HTTP 400), or the
    client could not make a request from the image it was given. Never retried."""


class ServerUnavailable(DetserveClientError):
    """The server cannot be reached or is overloaded (UNAVAILABLE / HTTP 503 / HTTP 429).

    Retried with exponential backoff by the client before it is raised."""

    retryable = True


class DeadlineExceeded(DetserveClientError):
    """The call's deadline passed before the server answered (DEADLINE_EXCEEDED / HTTP 504 / timeout)."""


_GRPC_CODES: dict[grpc.StatusCode, type[DetserveClientError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_HTTP_CODES: dict[int, type[DetserveClientError]] = {
    400: InvalidInput,
    404: ModelNotFound,
    408: DeadlineExceeded,
    413: InvalidInput,
    429: ServerUnavailable,
    503: ServerUnavailable,
    504: DeadlineExceeded,
}


def from_grpc_error(error: grpc.RpcError, server: str) -> DetserveClientError:
    """The client exception for a failed gRPC call (works for sync and ``grpc.aio`` errors)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _GRPC_CODES.get(code, DetserveClientError)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return cls(details, code=name, server=server)


def from_http_error(status: int, body: str, server: str) -> DetserveClientError:
    """The client exception for an HTTP error: TF Serving answers ``{"error": "<message>"}``."""
    import json

    message = body.strip()
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and "error" in payload:
            message = str(payload["error"])
    except ValueError:
        pass
    cls = _HTTP_CODES.get(status, DetserveClientError)
    return cls(message or f"HTTP {status}", code=f"HTTP {status}", server=server)

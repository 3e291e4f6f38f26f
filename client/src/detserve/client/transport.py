"""The transports: TF Serving's gRPC API (blocking and ``grpc.aio``) and its REST API (requests).

Like ``requests``' adapters, every transport has one interface, ``send(request, timeout)`` and ``close()``:
it sends a :class:`~detserve.client.wire.Request` as it is and returns the raw answer (a response proto, or
the JSON body), which ``request.parse`` reads. The transports do the I/O and nothing else: the requests are
built and the answers parsed without I/O in :mod:`detserve.client.wire`. They raise
:mod:`detserve.client.errors` exceptions carrying the server's message; none retries (the operations around
them do, :func:`detserve.client.retry.retrying`).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any, Protocol

import grpc
import requests
from requests.adapters import HTTPAdapter

from .address import ServerAddress, TlsConfig
from .contract import MAX_MESSAGE_BYTES
from .errors import (
    DeadlineExceeded,
    DetserveClientError,
    InvalidInput,
    ServerUnavailable,
    from_grpc_error,
    from_http_error,
)
from .wire import GRPC_METHODS, HttpRequest, Request

__all__ = ["Transport", "AsyncTransport", "GrpcTransport", "AsyncGrpcTransport", "RestTransport",
           "AsyncRestTransport", "open_transport"]

RECONNECT_BACKOFF_MS = 1000


class Transport(Protocol):
    def send(self, request: Request, timeout: float | None) -> Any: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def send(self, request: Request, timeout: float | None) -> Any: ...

    async def close(self) -> None: ...


class _GrpcChannel:
    """One channel, reused by every call (HTTP/2 multiplexes concurrent calls over it)."""

    _grpc: Any = grpc  # the module that makes the channel: grpc, or grpc.aio

    def __init__(self, address: ServerAddress, *, tls: TlsConfig, headers: dict[str, str] | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.address = address
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   # grpcio backs off reconnecting up to 120 s, and meanwhile fails every call at once: after a
                   # restart the channel would not see the new server for minutes. 1 s keeps it within the
                   # retry policy's own backoff of noticing.
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)]
        if address.tls:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
            self.channel = self._grpc.secure_channel(address.grpc_target, credentials, options=options)
        else:
            self.channel = self._grpc.insecure_channel(address.grpc_target, options=options)
        # gRPC metadata keys must be lowercase ASCII.
        self.metadata = tuple((key.lower(), value) for key, value in (headers or {}).items())
        self.calls = {
            rpc: self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response.FromString)
            for rpc, (path, response) in GRPC_METHODS.items()
        }


class GrpcTransport(_GrpcChannel):
    def send(self, request: Request, timeout: float | None):
        try:
            return self.calls[request.rpc](request.message, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_grpc_error(error, str(self.address)) from None

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport(_GrpcChannel):
    """``grpc.aio`` channel for asyncio callers (create it inside the running event loop)."""

    _grpc = grpc.aio

    async def send(self, request: Request, timeout: float | None):
        try:
            return await self.calls[request.rpc](request.message, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_grpc_error(error, str(self.address)) from None

    async def close(self) -> None:
        await self.channel.close()


class RestTransport:
    """TF Serving's REST API over one ``requests.Session`` (keep-alive connection pool)."""

    def __init__(self, address: ServerAddress, *, tls: TlsConfig, headers: dict[str, str] | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, pool_size: int = 16):
        self.address = address
        self.max_message_bytes = max_message_bytes
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(headers or {})
        self.session.trust_env = False  # never route a model server's traffic through a proxy from env
        self._files: list[str] = []
        if address.tls:
            self.session.verify = self._as_file(tls.ca_cert) if tls.ca_cert else True
            if tls.client_cert:
                self.session.cert = (self._as_file(tls.client_cert), self._as_file(tls.client_key))

    def _as_file(self, pem: bytes | None) -> str | None:
        if pem is None:
            return None
        handle, path = tempfile.mkstemp(prefix="detserve-client-", suffix=".pem")
        with os.fdopen(handle, "wb") as file:
            file.write(pem)
        self._files.append(path)
        return path

    def send(self, request: Request, timeout: float | None) -> dict:
        http: HttpRequest = request.message
        url = f"{self.address}{http.path}"
        data = None
        if http.body is not None:
            data = json.dumps(http.body, separators=(",", ":")).encode()
            if len(data) > self.max_message_bytes:
                raise InvalidInput(f"request body is {len(data)} bytes, over max_message_bytes="
                                   f"{self.max_message_bytes}", code="CLIENT", server=str(self.address))
        try:
            response = self.session.request(http.method, url, data=data, timeout=timeout,
                                            headers={"Content-Type": "application/json"} if data else None)
        except requests.exceptions.SSLError as exc:
            raise DetserveClientError(f"TLS handshake failed: {exc}", code="TLS", server=str(self.address)) from None
        except requests.exceptions.ConnectTimeout:
            raise ServerUnavailable("cannot connect: timed out", code="CONNECT", server=str(self.address)) from None
        except requests.exceptions.Timeout:
            raise DeadlineExceeded(f"no answer within {timeout:.3g} s" if timeout else "no answer (read timeout)",
                                   code="TIMEOUT", server=str(self.address)) from None
        except requests.exceptions.ConnectionError as exc:
            raise ServerUnavailable(f"cannot connect: {_reason(exc)}", code="CONNECT",
                                    server=str(self.address)) from None
        if response.status_code != 200:
            error = from_http_error(response.status_code, response.text, str(self.address))
            error.retry_after = _retry_after(response.headers.get("Retry-After"))
            raise error
        try:
            return response.json()
        except ValueError:
            raise DetserveClientError(f"the server answered HTTP 200 with a body that is not JSON: "
                                      f"{response.text[:200]!r}", code="HTTP 200", server=str(self.address)) from None

    def close(self) -> None:
        self.session.close()
        for path in self._files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._files.clear()


class AsyncRestTransport:
    """REST for asyncio callers: the blocking session in worker threads (requests has no asyncio API)."""

    def __init__(self, address: ServerAddress, **options):
        self.blocking = RestTransport(address, **options)

    async def send(self, request: Request, timeout: float | None) -> dict:
        return await asyncio.to_thread(self.blocking.send, request, timeout)

    async def close(self) -> None:
        self.blocking.close()


_TRANSPORTS = {"grpc": (GrpcTransport, AsyncGrpcTransport), "rest": (RestTransport, AsyncRestTransport)}


def open_transport(address: ServerAddress, *, tls: TlsConfig, headers: dict[str, str], max_message_bytes: int,
                   asynchronous: bool = False) -> Transport | AsyncTransport:
    """The transport the server's address names, blocking or for asyncio."""
    blocking, for_asyncio = _TRANSPORTS[address.transport]
    cls = for_asyncio if asynchronous else blocking
    return cls(address, tls=tls, headers=headers, max_message_bytes=max_message_bytes)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker
    return text[:200]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

"""The two transports: gRPC (sync and ``grpc.aio``) and TF Serving's REST API (requests).

Both raise :mod:`detserve.client.errors` exceptions carrying the server's message; neither retries
(the :class:`~detserve.client.retry.RetryPolicy` around them does).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import requests
from google.protobuf import json_format
from requests.adapters import HTTPAdapter

from .contract import MAX_MESSAGE_BYTES, SIGNATURE_DEF_FIELD, SIGNATURE_DEF_MAP_TYPE_URL
from .errors import (
    DeadlineExceeded,
    DetserveClientError,
    InvalidInput,
    ServerUnavailable,
    from_grpc_error,
    from_http_error,
)
from .protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
)
from .protos._pool import POOL

__all__ = ["ServerAddress", "parse_server", "GrpcTransport", "AsyncGrpcTransport", "RestTransport",
           "DEFAULT_MAX_MESSAGE_BYTES"]

DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501
DEFAULT_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES

_SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True), "http": ("rest", False), "https": ("rest", True)}


@dataclass(frozen=True)
class ServerAddress:
    transport: str  # "grpc" | "rest"
    tls: bool
    host: str
    port: int
    path: str = ""  # REST only: a prefix in front of /v1 (behind a proxy)

    @property
    def grpc_target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.path}"

    def __str__(self) -> str:
        if self.transport == "grpc":
            return f"{'grpcs' if self.tls else 'grpc'}://{self.grpc_target}"
        return self.base_url


def parse_server(server: str) -> ServerAddress:
    """``grpc://host:8500``, ``grpcs://host:443`` (TLS), ``http://host:8501``, ``https://host/prefix``;
    a bare ``host:port`` means gRPC. Missing ports default to 8500 (gRPC) and 8501 (REST)."""
    text = server.strip()
    if "://" not in text:
        text = "grpc://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported server scheme {parts.scheme!r} in {server!r}: "
                         "use grpc://, grpcs://, http:// or https://")
    transport, tls = _SCHEMES[scheme]
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in server address {server!r}") from exc
    if not parts.hostname:
        raise ValueError(f"no host in server address {server!r}")
    if port is None:
        port = DEFAULT_GRPC_PORT if transport == "grpc" else DEFAULT_REST_PORT
    path = parts.path.rstrip("/") if transport == "rest" else ""
    if transport == "grpc" and parts.path not in ("", "/"):
        raise ValueError(f"a gRPC address has no path: {server!r}")
    return ServerAddress(transport, tls, parts.hostname, port, path)


def _read_pem(value: str | os.PathLike | bytes | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _method(service: str, name: str) -> str:
    module = prediction_service_pb2 if service == "PredictionService" else model_service_pb2
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[name].name}"


_GRPC_METHODS = {
    "predict": (_method("PredictionService", "Predict"), predict_pb2.PredictResponse),
    "metadata": (_method("PredictionService", "GetModelMetadata"), get_model_metadata_pb2.GetModelMetadataResponse),
    "status": (_method("ModelService", "GetModelStatus"), get_model_status_pb2.GetModelStatusResponse),
}


@dataclass(frozen=True)
class TlsConfig:
    ca_cert: bytes | None = None  # PEM of the CA that signed the server's certificate (None: system roots)
    client_cert: bytes | None = None  # PEM, for mutual TLS
    client_key: bytes | None = None
    server_name: str | None = None  # expected name in the server's certificate (gRPC only)

    @classmethod
    def load(cls, ca_cert=None, client_cert=None, client_key=None, server_name=None) -> TlsConfig:
        return cls(_read_pem(ca_cert), _read_pem(client_cert), _read_pem(client_key), server_name)


class _GrpcBase:
    def __init__(self, address: ServerAddress, *, tls: TlsConfig, headers: dict[str, str],
                 max_message_bytes: int, options: list[tuple[str, Any]] | None, aio: bool):
        self.address = address
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *(options or []),
        ]
        module = grpc.aio if aio else grpc
        if address.tls:
            if tls.server_name:
                channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
            self.channel = module.secure_channel(address.grpc_target, credentials, options=channel_options)
        else:
            self.channel = module.insecure_channel(address.grpc_target, options=channel_options)
        # gRPC metadata keys must be lowercase ASCII.
        self.metadata = tuple((key.lower(), value) for key, value in headers.items())
        self._calls = {
            name: self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response.FromString)
            for name, (path, response) in _GRPC_METHODS.items()
        }


class GrpcTransport(_GrpcBase):
    """One channel, reused by every call (HTTP/2 multiplexes concurrent calls over it)."""

    def __init__(self, address: ServerAddress, *, tls: TlsConfig = TlsConfig(), headers: dict[str, str] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, options=None):
        super().__init__(address, tls=tls, headers=headers or {}, max_message_bytes=max_message_bytes,
                         options=options, aio=False)

    def call(self, method: str, request, timeout: float | None):
        try:
            return self._calls[method](request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_grpc_error(error, str(self.address)) from None

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport(_GrpcBase):
    """``grpc.aio`` channel for asyncio callers (create it inside the running event loop)."""

    def __init__(self, address: ServerAddress, *, tls: TlsConfig = TlsConfig(), headers: dict[str, str] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, options=None):
        super().__init__(address, tls=tls, headers=headers or {}, max_message_bytes=max_message_bytes,
                         options=options, aio=True)

    async def call(self, method: str, request, timeout: float | None):
        try:
            return await self._calls[method](request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_grpc_error(error, str(self.address)) from None

    async def close(self) -> None:
        await self.channel.close()


class RestTransport:
    """TF Serving's REST API over one ``requests.Session`` (keep-alive connection pool)."""

    def __init__(self, address: ServerAddress, *, tls: TlsConfig = TlsConfig(), headers: dict[str, str] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, pool_size: int = 16):
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

    @staticmethod
    def model_path(model: str, version: int | None, label: str | None) -> str:
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def request(self, method: str, path: str, body: dict | None, timeout: float | None) -> dict:
        url = self.address.base_url + path
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            if len(data) > self.max_message_bytes:
                raise InvalidInput(f"request body is {len(data)} bytes, over max_message_bytes="
                                   f"{self.max_message_bytes}", code="CLIENT", server=str(self.address))
        try:
            response = self.session.request(method, url, data=data, timeout=timeout,
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

    def metadata(self, model: str, version: int | None, label: str | None, timeout: float | None):
        payload = self.request("GET", self.model_path(model, version, label) + "/metadata", None, timeout)
        return parse_rest_metadata(payload)

    def status(self, model: str, version: int | None, label: str | None, timeout: float | None):
        payload = self.request("GET", self.model_path(model, version, label), None, timeout)
        return json_format.ParseDict(payload, get_model_status_pb2.GetModelStatusResponse(),
                                     ignore_unknown_fields=True, descriptor_pool=POOL)

    def close(self) -> None:
        self.session.close()
        for path in self._files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._files.clear()


def parse_rest_metadata(payload: dict) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """TF Serving's REST metadata JSON (the GetModelMetadataResponse printed with the SignatureDefMap
    Any, with or without ``@type``) -> the client's GetModelMetadataResponse."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    if "model_spec" in payload:
        json_format.ParseDict(payload["model_spec"], response.model_spec, ignore_unknown_fields=True,
                              descriptor_pool=POOL)
    signature_json = dict((payload.get("metadata") or {}).get(SIGNATURE_DEF_FIELD) or {})
    signature_json.pop("@type", None)
    signature_map = json_format.ParseDict(signature_json, get_model_metadata_pb2.SignatureDefMap(),
                                          ignore_unknown_fields=True, descriptor_pool=POOL)
    packed = response.metadata[SIGNATURE_DEF_FIELD]
    packed.type_url = SIGNATURE_DEF_MAP_TYPE_URL
    packed.value = signature_map.SerializeToString()
    return response


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

"""Where the model server is and how to reach it: the server URL and the TLS material (no I/O but reading PEMs)."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerAddress", "TlsConfig", "parse_server", "DEFAULT_PORTS"]

# TF Serving's ports: --port (gRPC) and --rest_api_port.
DEFAULT_PORTS = {"grpc": 8500, "rest": 8501}
_SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True), "http": ("rest", False), "https": ("rest", True)}
_SCHEME_OF = {value: scheme for scheme, value in _SCHEMES.items()}


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

    def __str__(self) -> str:
        """``grpc[s]://host:port`` or ``http[s]://host:port[/prefix]``: for REST, the base of every URL."""
        return f"{_SCHEME_OF[self.transport, self.tls]}://{self.grpc_target}{self.path}"


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
    if transport == "grpc" and parts.path not in ("", "/"):
        raise ValueError(f"a gRPC address has no path: {server!r}")
    port = DEFAULT_PORTS[transport] if port is None else port
    return ServerAddress(transport, tls, parts.hostname, port, parts.path.rstrip("/"))


def _read_pem(value: str | os.PathLike | bytes | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TlsConfig:
    ca_cert: bytes | None = None  # PEM of the CA that signed the server's certificate (None: system roots)
    client_cert: bytes | None = None  # PEM, for mutual TLS
    client_key: bytes | None = None
    server_name: str | None = None  # expected name in the server's certificate (gRPC only)

    @classmethod
    def load(cls, ca_cert=None, client_cert=None, client_key=None, server_name=None) -> TlsConfig:
        """PEM paths or bytes -> the PEM bytes the transports hand to grpc and requests."""
        return cls(_read_pem(ca_cert), _read_pem(client_cert), _read_pem(client_key), server_name)

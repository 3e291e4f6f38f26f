"""The one TF Serving stand-in of the test suite: the embedded server's own data plane and front ends
(``detserve.serving``: gRPC servicers, REST API, version manager), run in-process on ephemeral ports, with what
the client's tests need beyond it: faults on demand (status codes and delays for the next Predict calls), the
headers of the last Predict call, and TLS (a self-signed CA and server certificate made with openssl).

``servable_for(version_dir)`` loads one version; ``TestServer(servable, certificates)`` serves it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from serving_harness import ServerAddresses
from tensorflow_serving.apis import model_service_pb2_grpc

from detserve.client.contract import MAX_MESSAGE_BYTES
from detserve.serving.codec import model_spec, status_response
from detserve.serving.config import single_model_config
from detserve.serving.errors import ServingError
from detserve.serving.grpc_service import add_services
from detserve.serving.manager import ModelManager
from detserve.serving.metrics import ServingMetrics
from detserve.serving.predict import DataPlane, PredictCall, Prediction
from detserve.serving.rest import RestApi


class FaultyServable(DataPlane):
    """One version of one model behind the embedded data plane, failing on demand.

    ``faults``: status codes for the next Predict calls (one each); ``delay``: seconds before each Predict
    answers; ``predict_calls`` counts them; ``last_headers``: the gRPC metadata or HTTP headers of the last one;
    ``loaded``: the SavedModel as ``tf.saved_model.load`` returned it (for in-process comparisons).
    """

    def __init__(self, version_dir: Path, name: str):
        config = single_model_config(name, str(version_dir.parent))
        config.model_config_list.config[0].model_version_policy.specific.versions.append(int(version_dir.name))
        manager = ModelManager(config, poll_seconds=0)
        manager.start()
        super().__init__(manager, concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="fake-serving"))
        with manager.acquire(name) as handle:
            self.name, self.version, self.loaded = name, handle.version, handle.servable.loaded
        self.faults: collections.deque = collections.deque()
        self.delay = 0.0
        self.predict_calls = 0
        self.last_headers: dict[str, str] = {}
        self._lock = threading.Lock()

    async def predict(self, call: PredictCall) -> Prediction:
        with self._lock:
            self.predict_calls += 1
            fault = self.faults.popleft() if self.faults else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if fault is not None:
            raise ServingError(fault, f"injected {fault.name}")
        return await super().predict(call)


_SERVABLES: dict[tuple[Path, str], FaultyServable] = {}


def servable_for(version_dir: Path, name: str = "detector") -> FaultyServable:
    """One loaded version per SavedModel per session; faults and delay reset."""
    key = (Path(version_dir), name)
    if key not in _SERVABLES:
        _SERVABLES[key] = FaultyServable(Path(version_dir), name)
    servable = _SERVABLES[key]
    servable.faults.clear()
    servable.delay = 0.0
    return servable


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus on a plain (synchronous) ``grpc.server``, for tests that start one late."""

    def __init__(self, servable: FaultyServable):
        self.servable = servable

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            return status_response(self.servable.status(model_spec(request.model_spec)))
        except ServingError as error:
            context.abort(error.code, error.message)


class _RecordPredictHeaders(grpc.aio.ServerInterceptor):
    def __init__(self, servable: FaultyServable):
        self.servable = servable

    async def intercept_service(self, continuation, details):
        if details.method.endswith("/Predict"):
            self.servable.last_headers = {key: value for key, value in details.invocation_metadata}
        return await continuation(details)


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, hostname: str = "localhost") -> Certificates:
    """A self-signed CA and a server certificate it signs (SAN: hostname, 127.0.0.1), with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                         "server.pem"))
    ext = directory / "server.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{hostname},IP:127.0.0.1\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=detserve test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hostname}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return Certificates(ca, cert, key)


class TestServer(ServerAddresses):
    """The embedded server's gRPC and REST front ends on 127.0.0.1 (ephemeral ports, optionally TLS) around
    one :class:`FaultyServable`, on an event loop of their own."""

    __test__ = False  # not a pytest test class
    host = "localhost"  # the certificate's name

    def __init__(self, servable: FaultyServable, certificates: Certificates | None = None):
        self.servable = servable
        self.certificates = certificates
        self.tls = certificates is not None
        self.grpc_port = self.rest_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-serving-loop", daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: concurrent.futures.Future | None = None

    def start(self) -> TestServer:
        self._thread.start()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._done = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        ready.result(30)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._done.result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    async def _serve(self, ready: concurrent.futures.Future) -> None:
        servable, certificates = self.servable, self.certificates
        self._stop = asyncio.Event()
        metrics = ServingMetrics()
        grpc_server = grpc.aio.server(interceptors=[_RecordPredictHeaders(servable)], options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        add_services(grpc_server, servable, servable.manager, metrics, lambda config: config)
        context = None
        if certificates:
            credentials = grpc.ssl_server_credentials([(certificates.key.read_bytes(), certificates.cert.read_bytes())])
            self.grpc_port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certificates.cert), str(certificates.key))
        else:
            self.grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()

        @web.middleware
        async def record_predict_headers(request: web.Request, handler):
            if request.path.endswith(":predict"):
                servable.last_headers = {key.lower(): value for key, value in request.headers.items()}
            return await handler(request)

        app = RestApi(servable, metrics, None, None).app(MAX_MESSAGE_BYTES)
        app.middlewares.append(record_predict_headers)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.rest_port = runner.addresses[0][1]
        ready.set_result(None)
        await self._stop.wait()
        await asyncio.gather(grpc_server.stop(None), runner.cleanup())

"""TF Serving's REST API on aiohttp, plus the Prometheus page.

Routes (model names and labels URL-decoded, paths matched case-insensitively, as TF Serving's regexes do):

- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``           model status (GetModelStatus as JSON)
- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``  GetModelMetadata as JSON
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``   row or columnar predict
- ``POST ...:classify`` / ``...:regress``                         501, ``{"error": ...}``
- ``GET  <monitoring path>``                                      Prometheus text (monitoring.config)

Errors are ``{"error": "<message>"}`` with TF Serving's HTTP status for the code; any other /v1 path is
"Malformed request" (400), anything else 404. A body over the size limit is answered 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from urllib.parse import unquote

from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from detserve.client.contract import SIGNATURE_DEF_FIELD
from detserve.serving import rest_json
from detserve.serving.errors import Code, ServingError, from_exception, invalid_argument, unimplemented
from detserve.serving.grpc_service import fill_version_status, model_metadata
from detserve.serving.manager import ModelManager
from detserve.serving.metrics import ServingMetrics
from detserve.serving.predict import PredictionCore

log = logging.getLogger(__name__)

_PREDICTION = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1 = re.compile(r"(?i)/v1/.*")
JSON = "application/json"
# Bodies above this size are parsed in a worker thread, so one large JSON tensor does not stall the event loop.
_OFFLOAD_JSON_BYTES = 256 * 1024


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def _error_response(error: ServingError) -> web.Response:
    return _json_response(rest_json.error_body(error.message), error.http_status)


def _version(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.") from None


def _status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    document = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    return json.dumps(document, indent=1).encode()


def _metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """HttpRestApiHandler's metadata JSON: model_spec and the unpacked SignatureDefMap, proto field names."""
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
    document = {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_defs, **options)},
    }
    return json.dumps(document, indent=1).encode()


class RestApi:
    def __init__(self, core: PredictionCore, manager: ModelManager, metrics: ServingMetrics,
                 prometheus_path: str | None, timeout_s: float | None):
        self.max_body_bytes = 0
        self.core = core
        self.manager = manager
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.timeout_s = timeout_s

    def app(self, max_body_bytes: int) -> web.Application:
        self.max_body_bytes = max_body_bytes
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if self.prometheus_path and path == self.prometheus_path:
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, text="Use GET\n")
            return web.Response(text=self.metrics.render(), content_type="text/plain")
        if not _V1.fullmatch(path):
            return _json_response(rest_json.error_body(f"Not found: {request.method} {path}"), 404)
        try:
            if request.method == "POST" and (match := _PREDICTION.fullmatch(path)):
                name, version, label, method = match.groups()
                return await self._post(request, unquote(name), version, unquote(label) if label else None,
                                        method.lower())
            if request.method == "GET" and (match := _STATUS.fullmatch(path)):
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                label = unquote(label) if label else None
                if version and label:
                    raise invalid_argument(f"Both model version ({version}) and model version label ({label}) "
                                           "cannot be supplied.")
                if metadata:
                    return self._metadata(unquote(name), _version(version), label)
                return self._status(unquote(name), _version(version), label)
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        except ServingError as error:
            return _error_response(error)
        except Exception as error:  # a bug: still a JSON answer, and the server keeps serving
            log.exception("REST %s %s failed", request.method, path)
            return _error_response(from_exception(error))

    def _status(self, name: str, version: int | None, label: str | None) -> web.Response:
        response = get_model_status_pb2.GetModelStatusResponse()
        fill_version_status(response, self.manager.status(name, version, label))
        return _json_response(_status_json(response))

    def _metadata(self, name: str, version: int | None, label: str | None) -> web.Response:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        return _json_response(_metadata_json(model_metadata(self.core, request)))

    async def _post(self, request: web.Request, name: str, version_text: str | None, label: str | None,
                    method: str) -> web.Response:
        started = time.perf_counter()
        try:
            version = _version(version_text)
            if method != "predict":
                raise unimplemented(f"{method} is not implemented by the embedded detserve server, which serves "
                                    "Predict signatures only; use :predict, or TensorFlow Serving")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                self.metrics.request_count.inc(name, Code.RESOURCE_EXHAUSTED.name)
                return _json_response(rest_json.error_body(
                    f"Request body too large: {request.content_length} bytes, the server's limit is "
                    f"{self.max_body_bytes} bytes (--max-message-bytes)"), 413)
            if self.timeout_s:
                document = await asyncio.wait_for(self._predict(body, name, version, label), self.timeout_s)
            else:
                document = await self._predict(body, name, version, label)
        except TimeoutError:
            failure = ServingError(Code.DEADLINE_EXCEEDED, f"Deadline exceeded: the request took more than "
                                                           f"{self.timeout_s:g} s (--rest-api-timeout-in-ms)")
            self.metrics.request_count.inc(name, failure.code.name)
            return _error_response(failure)
        except Exception as error:
            failure = from_exception(error)
            self.metrics.request_count.inc(name, failure.code.name)
            if failure.code in (Code.INTERNAL, Code.UNKNOWN):
                log.error("REST %s %s failed: %s", method, name, failure.message)
            return _error_response(failure)
        self.metrics.request_count.inc(name, "OK")
        self.metrics.request_latency.observe(name, "predict", "REST", (time.perf_counter() - started) * 1e6)
        return _json_response(document)

    async def _predict(self, body: bytes, name: str, version: int | None, label: str | None) -> bytes:
        core = self.core
        loop = asyncio.get_running_loop()
        if len(body) > _OFFLOAD_JSON_BYTES:
            document = await loop.run_in_executor(core.executor, rest_json.loads, body)
        else:
            document = rest_json.loads(body)
        with core.acquire(name, version, label) as handle:
            signature = core.signature(handle.servable, rest_json.signature_name_of(document), rest=True)
            parsed = rest_json.parse_predict(document, signature.inputs)
            batch_size = core.validate(signature, parsed.inputs)
            started = time.perf_counter()
            outputs = await core.run(handle, signature, parsed.inputs, batch_size)
            self.metrics.runtime_latency.observe(name, "Predict", "TF2", (time.perf_counter() - started) * 1e6)
        result = rest_json.make_response(outputs, parsed.format)
        if len(body) > _OFFLOAD_JSON_BYTES:
            return await loop.run_in_executor(core.executor, rest_json.dumps, result)
        return rest_json.dumps(result)

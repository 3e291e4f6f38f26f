"""TF Serving's REST API on aiohttp, plus the Prometheus page.

Routes (model names and labels URL-decoded, paths matched case-insensitively, as TF Serving's regexes do):

- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``           model status (GetModelStatus as JSON)
- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``  GetModelMetadata as JSON
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``   row or columnar predict
- ``POST ...:classify`` / ``...:regress``                         501, ``{"error": ...}``
- ``GET  <monitoring path>``                                      Prometheus text (monitoring.config)

Errors are ``{"error": "<message>"}`` with TF Serving's HTTP status for the code; any other /v1 path is
"Malformed request" (400), anything else 404. A body over the size limit is answered 413. Versions are ASCII
digits (a negative version is a malformed path) that must fit an int64, as TF Serving's ``SimpleAtoi``
(``model_servers/http_rest_api_util.cc``).
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
from tensorflow_serving.apis import model_pb2

from detserve.client.contract import SIGNATURE_DEF_FIELD, ModelSpec

from . import rest_body, rest_json
from .codec import status_response
from .errors import Code, ServingError, from_exception, invalid_argument, unimplemented
from .metrics import ServingMetrics
from .predict import DataPlane, PredictCall, SignatureNotFound

log = logging.getLogger(__name__)

# TF Serving's regexes (model_servers/http_rest_api_util.cc); ASCII digits, as RE2's \d.
_PREDICTION = re.compile(r"(?ia)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?ia)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1 = re.compile(r"(?ia)/v1/.*")
JSON = "application/json"
# Bodies above this size are parsed and decoded in a worker thread, so one large JSON tensor does not stall the
# event loop; smaller ones stay on the loop, where they cost less than the hop to the pool (a b64 320x320 JPEG,
# 83 KB of JSON: 0.35 ms) and a 128 KiB list of numbers about 3 ms.
_OFFLOAD_JSON_BYTES = 128 * 1024
_PROTO_JSON = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def _error_response(error: ServingError) -> web.Response:
    return _json_response(rest_json.error_body(error.message), error.http_status)


_INT64_MAX = 2 ** 63 - 1


def _version(text: str | None) -> int | None:
    """The version of a URL (digits, as the regexes match it), refused as TF Serving refuses it beyond int64."""
    if not text:
        return None
    digits = text.lstrip("0") or "0"  # length first: int() itself refuses more than 4,300 digits
    if len(digits) > len(str(_INT64_MAX)) or int(digits) > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return int(digits)


def _read(body: bytes) -> tuple[object, bool]:
    """The request's JSON document, and whether true/false may hide among its numbers."""
    return rest_body.loads(body), rest_body.may_hold_booleans(body)


class RestApi:
    def __init__(self, plane: DataPlane, metrics: ServingMetrics, prometheus_path: str | None,
                 timeout_s: float | None):
        self.max_body_bytes = 0
        self.plane = plane
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.timeout_s = timeout_s

    def app(self, max_body_bytes: int) -> web.Application:
        self.max_body_bytes = max_body_bytes
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        response = await self._dispatch(request)
        if self.plane.draining:  # shutting down: the client reconnects, and finds the listener closed or another pod
            response.force_close()
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
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
                model = ModelSpec(unquote(name), _version(version), label)
                return _json_response(self._metadata(model) if metadata else self._status(model))
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        except ServingError as error:
            return _error_response(error)
        except Exception as error:  # a bug: still a JSON answer, and the server keeps serving
            log.exception("REST %s %s failed", request.method, path)
            return _error_response(from_exception(error))

    def _status(self, model: ModelSpec) -> bytes:
        """GetModelStatusResponse as JSON (its proto declares the snake_case JSON names)."""
        response = status_response(self.plane.status(model))
        document = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        return json.dumps(document, indent=1).encode()

    def _metadata(self, model: ModelSpec) -> bytes:
        """HttpRestApiHandler's metadata JSON: model_spec and the SignatureDefMap, proto field names."""
        name, version, signature_defs = self.plane.metadata(model)
        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = version
        document = {
            "model_spec": json_format.MessageToDict(spec, **_PROTO_JSON),
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_defs, **_PROTO_JSON)},
        }
        return json.dumps(document, indent=1).encode()

    async def _post(self, request: web.Request, name: str, version_text: str | None, label: str | None,
                    method: str) -> web.Response:
        started = time.perf_counter()
        try:
            model = ModelSpec(name, _version(version_text), label)
            if method != "predict":
                raise unimplemented(f"{method} is not implemented by the embedded detserve server, which serves "
                                    "Predict signatures only; use :predict, or TensorFlow Serving")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                self.metrics.request_count.inc(name, Code.RESOURCE_EXHAUSTED.name)
                size = self._oversize(request)
                return _json_response(rest_json.error_body(
                    f"Request body too large: {size}, the server's limit is {self.max_body_bytes} bytes "
                    "(--max-message-bytes)"), 413)
            document = await asyncio.wait_for(self._predict(body, model), self.timeout_s or None)
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

    def _oversize(self, request: web.Request) -> str:
        """How large a body over the limit is, as far as the request tells (aiohttp inflates a compressed body
        and counts the inflated bytes)."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            return f"more than {self.max_body_bytes} bytes once {encoding}-decompressed"
        if request.content_length is None:
            return f"more than {self.max_body_bytes} bytes (chunked, without a Content-Length)"
        return f"{request.content_length} bytes"

    async def _predict(self, body: bytes, model: ModelSpec) -> bytes:
        """Decode the JSON body into a PredictCall, run it on the data plane, encode the outputs."""
        offload = len(body) > _OFFLOAD_JSON_BYTES
        loop = asyncio.get_running_loop()
        document, booleans = (await loop.run_in_executor(self.plane.executor, _read, body)) if offload else _read(body)
        call = PredictCall(model, rest_json.signature_name_of(document),
                           lambda signature: rest_json.parse_predict(document, signature.inputs, booleans).inputs,
                           input_names=rest_json.input_names(document), small=not offload)
        try:
            prediction = await self.plane.predict(call)
        except SignatureNotFound as error:  # the REST handler's own lookup (GetInfoMap) answers INVALID_ARGUMENT
            raise invalid_argument(f'Serving signature name: "{error.signature_name}" not found in signature '
                                   "def") from None
        result = rest_json.make_response(prediction.outputs, rest_json.request_format(document))
        return await loop.run_in_executor(self.plane.executor, rest_json.dumps, result) if offload else rest_json.dumps(result)

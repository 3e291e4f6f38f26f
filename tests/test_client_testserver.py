"""A TF Serving stand-in for the client's end-to-end tests, and the tests that it is faithful.

The client's fault-injection tests (retries, deadlines, TLS) run against this server, which can fail on demand;
test_client_embedded.py runs the client against `detserve serve` itself. This one is the official
``tensorflow_serving.apis`` servicers over gRPC and TF Serving's REST API (the routes, JSON shapes and HTTP
status codes of tensorflow_serving/model_servers/http_rest_api_handler.cc and http_server.cc), both calling
one in-process SavedModel. Faults (status codes, delays) can be injected into Predict calls, and the
request headers/metadata of the last call are recorded.

Also here: a tiny detector SavedModel with detserve's exact signatures (built with
``detserve.export.signatures.build_module``, so it follows the export contract) and a self-signed CA and
server certificate made with the openssl command.

Other test modules import this one (``from test_client_testserver import ...``).
"""

from __future__ import annotations

import base64
import collections
import json
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

MODEL_NAME = "detector"
INPUT_SIZE = (320, 320)
LABEL_MAP = {1: "with_mask", 2: "without_mask", 3: "mask_weared_incorrect"}
GRID = 10  # the tiny model's 10x10 cells of 32x32 pixels, plus one "bright object" detection

# ---------------------------------------------------------------------------------------------------------
# The tiny detector: deterministic, content-dependent, TFOD2's legacy bilinear resize to 320x320.


def _tiny_detect(images: tf.Tensor) -> dict:
    """float32 [B, H, W, 3] -> TFOD2-style outputs. Resizes like TFOD2's fixed_shape_resizer."""
    x = tf.compat.v1.image.resize_bilinear(images, INPUT_SIZE, align_corners=False, half_pixel_centers=False)
    batch = tf.shape(x)[0]
    cell = INPUT_SIZE[0] // GRID
    pooled = tf.nn.avg_pool2d(x, cell, cell, "VALID")  # [B, 10, 10, 3]
    red, green, blue = tf.unstack(pooled, axis=-1)
    cell_scores = tf.sigmoid((red - green) / 32.0)
    cell_classes = tf.cast(tf.argmax(pooled, axis=-1), tf.float32) + 1.0
    ii, jj = tf.meshgrid(tf.range(GRID, dtype=tf.float32), tf.range(GRID, dtype=tf.float32), indexing="ij")
    jitter = blue / 255.0 * 0.05
    cell_boxes = tf.stack([ii / GRID + jitter, jj / GRID + jitter, (ii + 1) / GRID - jitter, (jj + 1) / GRID + 0 * jitter],
                          -1)
    # The bright-object detection: the bounding box of pixels brighter than 200 (exact edges).
    mask = tf.reduce_max(x, axis=-1) > 200.0
    rows, cols = tf.reduce_any(mask, axis=2), tf.reduce_any(mask, axis=1)
    height, width = float(INPUT_SIZE[0]), float(INPUT_SIZE[1])

    def first(flags):
        return tf.cast(tf.argmax(tf.cast(flags, tf.int32), axis=1), tf.float32)

    def end(flags, size):
        return size - tf.cast(tf.argmax(tf.cast(tf.reverse(flags, [1]), tf.int32), axis=1), tf.float32)

    object_box = tf.stack([first(rows) / height, first(cols) / width, end(rows, height) / height,
                           end(cols, width) / width], -1)
    object_score = tf.where(tf.reduce_any(rows, axis=1), 0.999, 0.0)
    boxes = tf.concat([object_box[:, None], tf.reshape(cell_boxes, [batch, GRID * GRID, 4])], axis=1)
    scores = tf.concat([object_score[:, None], tf.reshape(cell_scores, [batch, GRID * GRID])], axis=1)
    classes = tf.concat([tf.fill([batch, 1], 2.0), tf.reshape(cell_classes, [batch, GRID * GRID])], axis=1)
    top = tf.math.top_k(scores, k=100)
    return {
        "detection_boxes": tf.gather(boxes, top.indices, batch_dims=1),
        "detection_scores": top.values,
        "detection_classes": tf.gather(classes, top.indices, batch_dims=1),
        "num_detections": tf.reduce_sum(tf.cast(top.values > 0.01, tf.float32), axis=1),
    }


def build_tiny_saved_model(path: Path) -> Path:
    """A SavedModel with detserve's three signatures around :func:`_tiny_detect`."""
    from detserve.export.signatures import build_module, decode_image

    def detect_images(images):
        return _tiny_detect(tf.cast(images, tf.float32))

    def detect_encoded(encoded):
        def one(single):
            image = tf.cast(decode_image(single), tf.float32)[tf.newaxis]
            return tf.compat.v1.image.resize_bilinear(image, INPUT_SIZE, align_corners=False,
                                                      half_pixel_centers=False)[0]

        return _tiny_detect(tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([*INPUT_SIZE, 3], tf.float32)))

    module, signatures = build_module(detect_images, detect_encoded, LABEL_MAP, INPUT_SIZE, {})
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


_TINY: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """``<tmp>/detector/1``: built once per test session."""
    if "path" not in _TINY:
        root = Path(tempfile.mkdtemp(prefix="detserve-client-model-"))
        _TINY["path"] = build_tiny_saved_model(root / MODEL_NAME / "1")
    return _TINY["path"]


# ---------------------------------------------------------------------------------------------------------
# The servable.


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class Servable:
    """One model version loaded in-process, answering with official TF Serving messages."""

    def __init__(self, version_dir: Path, name: str = MODEL_NAME):
        self.name = name
        self.version = int(version_dir.name)
        self.loaded = tf.saved_model.load(str(version_dir))
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
        (meta_graph,) = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
        self.signature_defs = meta_graph.signature_def
        self.faults: collections.deque = collections.deque()  # grpc.StatusCode for the next Predict calls
        self.delay = 0.0  # seconds before answering Predict
        self.predict_calls = 0
        self.last_headers: dict[str, str] = {}
        self.lock = threading.Lock()

    def check_spec(self, spec) -> None:
        if spec.name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != self.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({spec.name}, {spec.version.value})")
        if spec.version_label:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {spec.version_label}")

    def predict(self, request: predict_pb2.PredictRequest, headers: dict[str, str]) -> predict_pb2.PredictResponse:
        with self.lock:
            self.predict_calls += 1
            self.last_headers = headers
            fault = self.faults.popleft() if self.faults else None
        if self.delay:
            time.sleep(self.delay)
        if fault is not None:
            raise ServingError(fault, f"injected {fault.name}")
        self.check_spec(request.model_spec)
        name = request.model_spec.signature_name or "serving_default"
        if name not in self.signature_defs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{name}\" not found in signature def")
        expected = set(self.signature_defs[name].inputs)
        if set(request.inputs) != expected:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input keys {sorted(request.inputs)} do not match signature inputs {sorted(expected)}")
        function = self.loaded.signatures[name]
        try:
            outputs = function(**{key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error).splitlines()[0]) from error
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = name
        for key, value in outputs.items():
            if request.output_filter and key not in request.output_filter:
                continue
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        self.check_spec(request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is required")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def status(self, request: get_model_status_pb2.GetModelStatusRequest):
        self.check_spec(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        item = response.model_version_status.add()
        item.version = self.version
        item.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        item.status.SetInParent()  # TF Serving always sets it (error_code OK)
        return response


# ---------------------------------------------------------------------------------------------------------
# gRPC, with the official servicers.


def _grpc_call(context, function):
    try:
        return function()
    except ServingError as error:
        context.abort(error.code, error.message)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, servable: Servable):
        self.servable = servable

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        headers = {key: value for key, value in context.invocation_metadata()}
        return _grpc_call(context, lambda: self.servable.predict(request, headers))

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _grpc_call(context, lambda: self.servable.metadata(request))


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, servable: Servable):
        self.servable = servable

    def GetModelStatus(self, request, context):  # noqa: N802
        return _grpc_call(context, lambda: self.servable.status(request))


# ---------------------------------------------------------------------------------------------------------
# REST, as TF Serving's http_rest_api_handler.

_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?:(?P<metadata>/metadata)|:(?P<method>predict))?$")


def _rest_model_spec(message, match) -> None:
    message.model_spec.name = match["name"]
    if match["version"]:
        message.model_spec.version.value = int(match["version"])
    if match["label"]:
        message.model_spec.version_label = match["label"]


def _json_to_tensor(value, dtype) -> np.ndarray:
    if dtype == tf.string.as_datatype_enum:
        def decode(item):
            if isinstance(item, list):
                return [decode(v) for v in item]
            if isinstance(item, dict) and "b64" in item:
                return base64.b64decode(item["b64"])
            return item.encode() if isinstance(item, str) else item

        return np.array(decode(value), dtype=object)
    return np.array(value, dtype=tf.dtypes.as_dtype(dtype).as_numpy_dtype)


def _tensor_to_json(proto):
    array = tf.make_ndarray(proto)
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def _make_rest_handler(servable: Servable):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client gave up (deadline tests)

        def _dispatch(self, method: str) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            match = _MODEL_PATH.match(self.path)
            try:
                if match is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {self.path}")
                if method == "GET" and match["metadata"]:
                    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                    _rest_model_spec(request, match)
                    payload = json_format.MessageToDict(servable.metadata(request), preserving_proto_field_name=True)
                elif method == "GET" and not match["method"]:
                    request = get_model_status_pb2.GetModelStatusRequest()
                    _rest_model_spec(request, match)
                    payload = json_format.MessageToDict(servable.status(request), preserving_proto_field_name=True,
                                                        always_print_fields_with_no_presence=True)
                elif method == "POST" and match["method"] == "predict":
                    payload = self._predict(match, json.loads(body), headers)
                else:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {self.path}")
            except ServingError as error:
                self._send(HTTP_STATUS.get(error.code, 500), {"error": error.message})
                return
            except ValueError as error:
                self._send(400, {"error": f"JSON Parse error: {error}"})
                return
            self._send(200, payload)

        def _predict(self, match, body: dict, headers) -> dict:
            request = predict_pb2.PredictRequest()
            _rest_model_spec(request, match)
            name = body.get("signature_name") or "serving_default"
            request.model_spec.signature_name = name
            if "inputs" not in body:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "this test server reads the columnar 'inputs' form")
            signature = servable.signature_defs.get(name)
            if signature is None:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Serving signature name: \"{name}\" not found in signature def")
            inputs = body["inputs"]
            if not isinstance(inputs, dict):
                (only,) = signature.inputs
                inputs = {only: inputs}
            for key, value in inputs.items():
                if key not in signature.inputs:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input {key}")
                request.inputs[key].CopyFrom(tf.make_tensor_proto(_json_to_tensor(value, signature.inputs[key].dtype)))
            response = servable.predict(request, headers)
            outputs = {key: _tensor_to_json(value) for key, value in response.outputs.items()}
            return {"outputs": outputs if len(outputs) != 1 else next(iter(outputs.values()))}

        def do_GET(self):  # noqa: N802
            self._dispatch("GET")

        def do_POST(self):  # noqa: N802
            self._dispatch("POST")

    return Handler


# ---------------------------------------------------------------------------------------------------------
# Both servers around one servable.


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


class TestServer:
    """gRPC and REST on 127.0.0.1 (ephemeral ports), optionally TLS, around one :class:`Servable`."""

    __test__ = False  # not a pytest test class

    def __init__(self, servable: Servable, certificates: Certificates | None = None):
        self.servable = servable
        self.tls = certificates is not None
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                       options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(servable),
                                                                          self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(servable), self.grpc_server)
        if certificates:
            credentials = grpc.ssl_server_credentials([(certificates.key.read_bytes(), certificates.cert.read_bytes())])
            self.grpc_port = self.grpc_server.add_secure_port("127.0.0.1:0", credentials)
        else:
            self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.http_server = ThreadingHTTPServer(("127.0.0.1", 0), _make_rest_handler(servable))
        self.http_server.daemon_threads = True
        if certificates:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certificates.cert), str(certificates.key))
            self.http_server.socket = context.wrap_socket(self.http_server.socket, server_side=True)
        self.http_port = self.http_server.server_address[1]
        self._thread = threading.Thread(target=self.http_server.serve_forever, daemon=True)

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.http_port}"

    def url(self, transport: str) -> str:
        return self.grpc_url if transport == "grpc" else self.rest_url

    def start(self) -> TestServer:
        self.grpc_server.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.http_server.shutdown()
        self.http_server.server_close()
        self.grpc_server.stop(grace=None)


_SERVABLES: dict[Path, Servable] = {}


def servable_for(version_dir: Path) -> Servable:
    """One loaded Servable per SavedModel per session; faults and counters reset."""
    if version_dir not in _SERVABLES:
        _SERVABLES[version_dir] = Servable(version_dir)
    servable = _SERVABLES[version_dir]
    servable.faults.clear()
    servable.delay = 0.0
    return servable


# ---------------------------------------------------------------------------------------------------------
# The stand-in is faithful: the official client stubs and TF Serving's REST shapes work against it.


@pytest.fixture(scope="module")
def server():
    server = TestServer(servable_for(tiny_model_dir())).start()
    yield server
    server.stop()


def test_official_stubs_talk_to_the_test_server(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc as official

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = official.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 50, 60, 3), np.uint8)))
        response = stub.Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["detection_boxes"]).shape == (2, 100, 4)
        assert response.model_spec.version.value == 1
        meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": MODEL_NAME}, metadata_field=["signature_def"]), timeout=30)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(signature_map)
        assert set(signature_map.signature_def) >= {"serving_default", "serving_bytes", "model_info"}
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_pb2.PredictRequest(model_spec={"name": "nope"}), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_shapes_are_tf_servings(server):
    import requests

    status = requests.get(f"{server.rest_url}/v1/models/{MODEL_NAME}", timeout=30).json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(f"{server.rest_url}/v1/models/{MODEL_NAME}/versions/1/metadata", timeout=30).json()
    assert meta["model_spec"]["version"] == "1"
    assert meta["metadata"]["signature_def"]["signature_def"]["model_info"]["inputs"]["images"]["tensor_shape"] == {
        "dim": [{"size": "-1"}, {"size": "320"}, {"size": "320"}, {"size": "3"}]}
    missing = requests.get(f"{server.rest_url}/v1/models/nope", timeout=30)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    answer = requests.post(f"{server.rest_url}/v1/models/{MODEL_NAME}:predict", timeout=30, json={
        "signature_name": "serving_bytes", "inputs": {"encoded_images": [{"b64": base64.b64encode(_png()).decode()}]}})
    outputs = answer.json()["outputs"]
    assert np.shape(outputs["detection_boxes"]) == (1, 100, 4)
    assert isinstance(outputs["detection_class_names"][0][0], str)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

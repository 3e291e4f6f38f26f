"""``Detector`` (blocking) and ``AsyncDetector`` (asyncio): one API over gRPC and REST."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .contract import (
    CLASS_NAMES_OUTPUT,
    DETECTION_BOXES,
    DETECTION_CLASSES,
    DETECTION_OUTPUTS,
    DETECTION_SCORES,
    NUM_DETECTIONS,
    NUMERIC_OUTPUTS,
    SIGNATURE_DEF_FIELD,
)
from .errors import DeadlineExceeded, DetserveClientError, InvalidInput, ModelNotFound, ServerUnavailable
from .images import ImageInput, LoadedImage, ResizeMethod, encode_image, load_image, resize_bilinear
from .metadata import ModelMetadata, ModelStatus, Signature
from .protos import get_model_metadata_pb2, get_model_status_pb2, predict_pb2
from .retry import NO_RETRY, RetryPolicy, acall_with_retry, call_with_retry
from .tensors import json_to_ndarray, make_ndarray, make_tensor_proto
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AsyncGrpcTransport,
    GrpcTransport,
    RestTransport,
    ServerAddress,
    TlsConfig,
    parse_server,
)

__all__ = ["Box", "Detection", "Detector", "AsyncDetector", "ENCODINGS"]

ENCODINGS = ("auto", "raw", "jpeg", "png")


class Box(NamedTuple):
    """(xmin, ymin, xmax, ymax). TF models output (ymin, xmin, ymax, xmax); the client reorders."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True)
class Detection:
    """One detected object.

    ``box`` is in pixels of the original image (x to the right, y down, continuous coordinates:
    a box covering the whole image is (0, 0, width, height)); ``box_normalized`` is the model's output,
    in [0, 1] of the width and height. ``box == box_normalized * (width, height, width, height)``.
    """

    label: str
    class_id: int
    score: float
    box: Box
    box_normalized: Box

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "score": self.score,
                "box": dict(self.box._asdict()), "box_normalized": dict(self.box_normalized._asdict())}


@dataclass
class _Chunk:
    """One Predict request: images ``indices`` of the call, as one batched input tensor."""

    signature: Signature
    indices: list[int]
    payload: Any  # np.ndarray uint8 [B, H, W, 3] or list[bytes]


class _Core:
    """Everything but I/O: configuration, request building, response parsing. Shared by both classes."""

    def __init__(self, server: str, model: str, version: int | None, label: str | None, *,
                 encoding: str, signature: str | None, score_threshold: float, max_detections: int | None,
                 timeout: float | None, retry: RetryPolicy | None, headers: dict[str, str] | None,
                 ca_cert, client_cert, client_key, server_name: str | None, max_message_bytes: int,
                 input_size: tuple[int, int] | None, resize_method: ResizeMethod, jpeg_quality: int,
                 max_batch_size: int):
        self.address: ServerAddress = parse_server(server)
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if resize_method not in ("bilinear", "bilinear_legacy"):
            raise ValueError(f"resize_method must be 'bilinear' or 'bilinear_legacy', got {resize_method!r}")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if not self.address.tls and any(v is not None for v in (ca_cert, client_cert, client_key)):
            raise ValueError(f"TLS options need a grpcs:// or https:// server, not {self.address}")
        self.model = model
        self.version = None if version is None else int(version)
        self.label = label
        self.encoding = encoding
        self.signature = signature
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.headers = dict(headers or {})
        self.tls = TlsConfig.load(ca_cert, client_cert, client_key, server_name) if self.address.tls else TlsConfig()
        self.max_message_bytes = max_message_bytes
        self.input_size = tuple(input_size) if input_size else None
        self.resize_method = resize_method
        self.jpeg_quality = jpeg_quality
        self.max_batch_size = max_batch_size

    @property
    def grpc(self) -> bool:
        return self.address.transport == "grpc"

    def describe(self) -> str:
        which = f" version {self.version}" if self.version is not None else f" label {self.label!r}" if self.label else ""
        return f"model {self.model!r}{which} at {self.address}"

    # -- requests -------------------------------------------------------------------------------------------

    def fill_spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature_name:
            spec.signature_name = signature_name

    def metadata_request(self):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        self.fill_spec(request.model_spec)
        return request

    def status_request(self):
        request = get_model_status_pb2.GetModelStatusRequest()
        self.fill_spec(request.model_spec)
        return request

    def predict_request(self, signature: Signature, inputs: dict[str, Any], outputs: Iterable[str] = ()):
        request = predict_pb2.PredictRequest()
        self.fill_spec(request.model_spec, signature.name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(make_tensor_proto(value))
        request.output_filter.extend(outputs)
        return request

    @staticmethod
    def rest_predict_body(signature: Signature, inputs: dict[str, Any]) -> dict:
        columns = {}
        for key, value in inputs.items():
            if isinstance(value, (list, tuple)):  # bytes: TF Serving's {"b64": ...} convention
                columns[key] = [{"b64": base64.b64encode(v).decode("ascii")} for v in value]
            else:
                columns[key] = np.asarray(value).tolist()
        return {"signature_name": signature.name, "inputs": columns}

    @staticmethod
    def outputs_from_grpc(response) -> dict[str, np.ndarray]:
        return {key: make_ndarray(value) for key, value in response.outputs.items()}

    @staticmethod
    def outputs_from_rest(payload: dict, signature: Signature) -> dict[str, np.ndarray]:
        outputs = payload.get("outputs")
        if outputs is None:
            raise DetserveClientError(f"REST predict answer has no 'outputs': {str(payload)[:200]}")
        if not isinstance(outputs, dict):  # a one-output signature answers with the bare value
            keys = list(signature.outputs)
            outputs = {keys[0] if len(keys) == 1 else "outputs": outputs}
        result = {}
        for key, value in outputs.items():
            spec = signature.outputs.get(key)
            result[key] = json_to_ndarray(value, string=spec is not None and spec.dtype == "DT_STRING")
        return result

    # -- detection --------------------------------------------------------------------------------------------

    def mode(self) -> str:
        if self.encoding != "auto":
            return self.encoding
        return "raw" if self.grpc else "jpeg"

    def detection_signature(self, meta: ModelMetadata, mode: str) -> Signature:
        if self.signature:
            signature = meta.signatures.get(self.signature)
            if signature is None:
                raise ModelNotFound(f"{self.describe()} has no signature {self.signature!r}; it has "
                                    f"{sorted(meta.signatures)}", code="NO_SIGNATURE", server=str(self.address))
            return signature
        signature = meta.image_signature if mode == "raw" else meta.bytes_signature
        if signature is None:
            wanted = "uint8 images [B, H, W, 3]" if mode == "raw" else "encoded images string [B]"
            raise ModelNotFound(f"{self.describe()} has no detection signature taking {wanted} (signatures: "
                                f"{sorted(meta.signatures)}); try encoding={'jpeg' if mode == 'raw' else 'raw'!r}",
                                code="NO_SIGNATURE", server=str(self.address))
        return signature

    def plan(self, meta: ModelMetadata, images: Sequence[ImageInput]) -> tuple[list[LoadedImage], list[_Chunk]]:
        """Load, resize and encode the images; group them into Predict requests of at most max_batch_size."""
        loaded = [load_image(image, index) for index, image in enumerate(images)]
        mode = self.mode()
        signature = self.detection_signature(meta, mode)
        if signature.input.dtype == "DT_STRING":
            mode = "png" if mode == "png" else "jpeg"
        elif signature.input.dtype == "DT_UINT8":
            mode = "raw"
        else:
            raise InvalidInput(f"signature {signature.name!r} takes {signature.input.dtype}; the client sends uint8 "
                               "images or encoded image strings", code="CLIENT", server=str(self.address))
        size = self.input_size or meta.input_size
        chunks: list[_Chunk] = []
        if mode == "raw":
            arrays = [resize_bilinear(image.pixels, size, self.resize_method) if size else image.pixels
                      for image in loaded]
            start = 0
            while start < len(arrays):  # consecutive images of equal shape share a request
                end = start + 1
                while end < len(arrays) and end - start < self.max_batch_size and arrays[end].shape == arrays[start].shape:
                    end += 1
                chunks.append(_Chunk(signature, list(range(start, end)), np.stack(arrays[start:end])))
                start = end
        else:
            blobs = []
            for image in loaded:
                if image.encoded is not None:  # JPEG/PNG as given: no decode, no re-encode
                    blobs.append(image.encoded)
                else:
                    pixels = resize_bilinear(image.pixels, size, self.resize_method) if size else image.pixels
                    blobs.append(encode_image(pixels, mode, self.jpeg_quality))
            for start in range(0, len(blobs), self.max_batch_size):
                indices = list(range(start, min(start + self.max_batch_size, len(blobs))))
                chunks.append(_Chunk(signature, indices, [blobs[i] for i in indices]))
        return loaded, chunks

    def output_filter(self, signature: Signature) -> list[str]:
        return [key for key in DETECTION_OUTPUTS if key in signature.outputs]

    def detections(self, outputs: dict[str, np.ndarray], row: int, image: LoadedImage, score_threshold: float,
                   max_detections: int | None, class_names: dict[int, str] | None) -> list[Detection]:
        missing = [key for key in NUMERIC_OUTPUTS if key not in outputs]
        if missing:
            raise DetserveClientError(f"{self.describe()} answered without {missing} (got {sorted(outputs)})",
                                      code="BAD_RESPONSE", server=str(self.address))
        boxes = np.asarray(outputs[DETECTION_BOXES][row], dtype=np.float64)
        scores = np.asarray(outputs[DETECTION_SCORES][row], dtype=np.float64)
        classes = np.asarray(outputs[DETECTION_CLASSES][row], dtype=np.float64)
        count = min(int(round(float(outputs[NUM_DETECTIONS][row]))), len(scores))
        names = outputs.get(CLASS_NAMES_OUTPUT)
        width, height = image.size
        result = []
        for j in range(count):
            score = float(scores[j])
            if score < score_threshold:
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[j])
            class_id = int(round(float(classes[j])))
            label = ""
            if names is not None:
                value = names[row][j]
                label = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if not label:
                label = (class_names or {}).get(class_id, str(class_id))
            result.append(Detection(label, class_id, score,
                                    Box(xmin * width, ymin * height, xmax * width, ymax * height),
                                    Box(xmin, ymin, xmax, ymax)))
            if max_detections is not None and len(result) >= max_detections:
                break
        return result

    def info_inputs(self, meta: ModelMetadata) -> tuple[Signature, dict[str, np.ndarray]] | None:
        signature = meta.info_signature
        if signature is None or meta.input_size is None or len(signature.inputs) != 1:
            return None
        height, width = meta.input_size
        return signature, {signature.input.key: np.zeros((1, height, width, 3), np.uint8)}

    @staticmethod
    def class_names_from(outputs: dict[str, np.ndarray]) -> dict[int, str] | None:
        if "class_ids" not in outputs or "class_names" not in outputs:
            return None
        ids = np.asarray(outputs["class_ids"])[0]
        names = outputs["class_names"][0]
        return {int(i): (n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)) for i, n in zip(ids, names, strict=True)}

    @staticmethod
    def ready(status: ModelStatus, version: int | None) -> bool:
        return version in status.available_versions if version is not None else status.available


_COMMON_DOC = """
    Args:
        server: ``grpc://host:8500`` (gRPC), ``grpcs://host:port`` (gRPC over TLS), ``http://host:8501``
            or ``https://host[:port][/prefix]`` (TF Serving's REST API). A bare ``host:port`` is gRPC.
        model: the served model's name.
        version / label: pin a version number or a version label (default: the newest version).
        encoding: ``"auto"`` (gRPC: ``raw``, REST: ``jpeg``), ``"raw"`` (uint8 pixels, resized on the
            client to the model's input size, to the uint8 signature), ``"jpeg"`` / ``"png"`` (encoded bytes
            to the string signature; JPEG/PNG inputs are sent as they are, arrays are resized and encoded).
        signature: a signature name, instead of picking one from the metadata by input type.
        score_threshold / max_detections: defaults for detect() (per-call arguments override them).
        timeout: deadline in seconds for each call, retries included (None: no deadline).
        retry: a :class:`RetryPolicy` (UNAVAILABLE / HTTP 503 / HTTP 429 only).
        headers: extra gRPC metadata / HTTP headers on every call (e.g. ``{"authorization": "Bearer ..."}``).
        ca_cert / client_cert / client_key: PEM paths or bytes for TLS (custom CA, mutual TLS).
        server_name: the name to expect in the server's certificate (gRPC; e.g. when dialling an IP).
        max_message_bytes: largest request/response (gRPC channel option; REST request body check).
        input_size: (height, width) to resize to, instead of the size from the model's metadata.
        resize_method: ``"bilinear_legacy"`` (TF1 ResizeBilinear, what TFOD2's fixed_shape_resizer runs in
            the graph: the default) or ``"bilinear"`` (``tf.image.resize``): pick the model's own.
        jpeg_quality: for arrays and PIL images sent as JPEG.
        max_batch_size: images per Predict request in detect_batch() (TF Serving refuses requests larger
            than its batching config's max_batch_size: 32 in serving/batching.config).
"""


def _core_from(args: dict) -> _Core:
    args = dict(args)
    for key in ("self", "__class__"):
        args.pop(key, None)
    return _Core(**args)


class Detector:
    """Blocking client for a detector served by TF Serving or ``detserve serve``.

    Thread-safe: one gRPC channel / one HTTP session per Detector, shared by all calls and threads.
    Use it as a context manager or call :meth:`close`.
    """

    __doc__ += _COMMON_DOC

    def __init__(self, server: str = "grpc://localhost:8500", model: str = "detector", version: int | None = None,
                 label: str | None = None, *, encoding: str = "auto", signature: str | None = None,
                 score_threshold: float = 0.0, max_detections: int | None = None, timeout: float | None = 10.0,
                 retry: RetryPolicy | None = None, headers: dict[str, str] | None = None, ca_cert=None,
                 client_cert=None, client_key=None, server_name: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, input_size: tuple[int, int] | None = None,
                 resize_method: ResizeMethod = "bilinear_legacy", jpeg_quality: int = 95, max_batch_size: int = 32):
        self._core = _core_from(locals())
        core = self._core
        if core.grpc:
            self._transport = GrpcTransport(core.address, tls=core.tls, headers=core.headers,
                                            max_message_bytes=core.max_message_bytes)
        else:
            self._transport = RestTransport(core.address, tls=core.tls, headers=core.headers,
                                            max_message_bytes=core.max_message_bytes)
        self._metadata: ModelMetadata | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Detector({str(self._core.address)!r}, model={self._core.model!r})"

    @property
    def server(self) -> str:
        return str(self._core.address)

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _call(self, what: str, attempt, timeout, retry: RetryPolicy | None = None):
        timeout = self._core.timeout if timeout is None else timeout
        return call_with_retry(attempt, policy=retry or self._core.retry, timeout=timeout,
                               what=f"{what} {self._core.describe()}")

    def predict(self, signature: str | Signature, inputs: dict[str, Any], *, timeout: float | None = None,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Predict with any signature: ``inputs`` maps input keys to numpy arrays or lists of bytes."""
        core = self._core
        if isinstance(signature, str):
            signature = self.metadata().signatures.get(signature) or Signature(signature, "", {}, {})
        if core.grpc:
            request = core.predict_request(signature, inputs, output_filter)
            response = self._call("Predict", lambda t: self._transport.call("predict", request, t), timeout)
            return core.outputs_from_grpc(response)
        body = core.rest_predict_body(signature, inputs)
        path = RestTransport.model_path(core.model, core.version, core.label) + ":predict"
        payload = self._call("Predict", lambda t: self._transport.request("POST", path, body, t), timeout)
        outputs = core.outputs_from_rest(payload, signature)
        return {k: v for k, v in outputs.items() if not output_filter or k in output_filter}

    # -- public API ------------------------------------------------------------------------------------------------

    def metadata(self, *, refresh: bool = False, class_names: bool = False,
                 timeout: float | None = None) -> ModelMetadata:
        """The model's signatures and input size (cached); ``class_names=True`` also asks the model for its
        label map (one Predict call to its ``model_info`` signature)."""
        core = self._core
        with self._lock:
            meta = None if refresh else self._metadata
        if meta is None:
            if core.grpc:
                request = core.metadata_request()
                response = self._call("GetModelMetadata", lambda t: self._transport.call("metadata", request, t),
                                      timeout)
            else:
                response = self._call("GetModelMetadata", lambda t: self._transport.metadata(
                    core.model, core.version, core.label, t), timeout)
            meta = ModelMetadata.from_proto(response)
            with self._lock:
                self._metadata = meta
        if class_names and meta.class_names is None:
            info = core.info_inputs(meta)
            if info is not None:
                outputs = self.predict(info[0], info[1], timeout=timeout)
                meta.class_names = core.class_names_from(outputs)
        return meta

    def status(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> ModelStatus:
        """GetModelStatus: the state of each version of the model."""
        core = self._core
        if core.grpc:
            request = core.status_request()
            response = self._call("GetModelStatus", lambda t: self._transport.call("status", request, t), timeout,
                                  retry)
        else:
            response = self._call("GetModelStatus", lambda t: self._transport.status(
                core.model, core.version, core.label, t), timeout, retry)
        return ModelStatus.from_proto(core.model, response)

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> ModelStatus:
        """Poll :meth:`status` until the model (or the pinned version) is AVAILABLE; raise
        :class:`DeadlineExceeded` naming the last problem after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: object = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self._core.describe()} not ready after {timeout:g} s: {last}",
                                       code="NOT_READY", server=str(self._core.address))
            try:
                call_timeout = remaining if self._core.timeout is None else min(remaining, self._core.timeout)
                status = self.status(timeout=call_timeout, retry=NO_RETRY)
                if self._core.ready(status, self._core.version):
                    return status
                last = "versions " + (", ".join(f"{v.version}: {v.state}" for v in status.versions) or "none")
            except (ServerUnavailable, ModelNotFound, DeadlineExceeded) as error:
                last = error
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))

    def detect(self, image: ImageInput, *, score_threshold: float | None = None, max_detections: int | None = None,
               timeout: float | None = None) -> list[Detection]:
        """Detect objects in one image (a path, bytes, a PIL image or an HxWx3 uint8 RGB array)."""
        return self.detect_batch([image], score_threshold=score_threshold, max_detections=max_detections,
                                 timeout=timeout)[0]

    def detect_batch(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                     max_detections: int | None = None, timeout: float | None = None) -> list[list[Detection]]:
        """Detect objects in several images: batched Predict requests of up to ``max_batch_size`` images."""
        core = self._core
        images = list(images)
        if not images:
            return []
        meta = self.metadata(timeout=timeout)
        loaded, chunks = core.plan(meta, images)
        threshold = core.score_threshold if score_threshold is None else score_threshold
        limit = core.max_detections if max_detections is None else max_detections
        results: list[list[Detection]] = [[] for _ in images]
        for chunk in chunks:
            outputs = self.predict(chunk.signature, {chunk.signature.input.key: chunk.payload}, timeout=timeout,
                                   output_filter=core.output_filter(chunk.signature))
            for row, index in enumerate(chunk.indices):
                results[index] = core.detections(outputs, row, loaded[index], threshold, limit, meta.class_names)
        return results

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncDetector:
    """asyncio client: ``grpc.aio`` for gRPC servers (one channel, any number of concurrent calls); for
    REST servers the blocking session runs in worker threads. Same arguments and methods as
    :class:`Detector`, as coroutines. Create it (or at least call it first) inside the running loop.
    """

    __doc__ += _COMMON_DOC

    def __init__(self, server: str = "grpc://localhost:8500", model: str = "detector", version: int | None = None,
                 label: str | None = None, *, encoding: str = "auto", signature: str | None = None,
                 score_threshold: float = 0.0, max_detections: int | None = None, timeout: float | None = 10.0,
                 retry: RetryPolicy | None = None, headers: dict[str, str] | None = None, ca_cert=None,
                 client_cert=None, client_key=None, server_name: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, input_size: tuple[int, int] | None = None,
                 resize_method: ResizeMethod = "bilinear_legacy", jpeg_quality: int = 95, max_batch_size: int = 32):
        self._core = _core_from(locals())
        self._transport: AsyncGrpcTransport | RestTransport | None = None
        self._metadata: ModelMetadata | None = None
        self._metadata_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AsyncDetector({str(self._core.address)!r}, model={self._core.model!r})"

    @property
    def server(self) -> str:
        return str(self._core.address)

    def _get_transport(self):
        if self._transport is None:
            core = self._core
            cls = AsyncGrpcTransport if core.grpc else RestTransport
            self._transport = cls(core.address, tls=core.tls, headers=core.headers,
                                  max_message_bytes=core.max_message_bytes)
        return self._transport

    async def _call(self, what: str, attempt, timeout, retry: RetryPolicy | None = None):
        timeout = self._core.timeout if timeout is None else timeout
        return await acall_with_retry(attempt, policy=retry or self._core.retry, timeout=timeout,
                                      what=f"{what} {self._core.describe()}")

    async def predict(self, signature: str | Signature, inputs: dict[str, Any], *, timeout: float | None = None,
                      output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        core = self._core
        transport = self._get_transport()
        if isinstance(signature, str):
            signature = (await self.metadata()).signatures.get(signature) or Signature(signature, "", {}, {})
        if core.grpc:
            request = core.predict_request(signature, inputs, output_filter)
            response = await self._call("Predict", lambda t: transport.call("predict", request, t), timeout)
            return core.outputs_from_grpc(response)
        body = core.rest_predict_body(signature, inputs)
        path = RestTransport.model_path(core.model, core.version, core.label) + ":predict"
        payload = await self._call("Predict", lambda t: asyncio.to_thread(transport.request, "POST", path, body, t),
                                   timeout)
        outputs = core.outputs_from_rest(payload, signature)
        return {k: v for k, v in outputs.items() if not output_filter or k in output_filter}

    async def metadata(self, *, refresh: bool = False, class_names: bool = False,
                       timeout: float | None = None) -> ModelMetadata:
        core = self._core
        transport = self._get_transport()
        if self._metadata_lock is None:
            self._metadata_lock = asyncio.Lock()
        async with self._metadata_lock:  # one GetModelMetadata for many concurrent first calls
            if refresh or self._metadata is None:
                if core.grpc:
                    request = core.metadata_request()
                    response = await self._call("GetModelMetadata",
                                                lambda t: transport.call("metadata", request, t), timeout)
                else:
                    response = await self._call("GetModelMetadata", lambda t: asyncio.to_thread(
                        transport.metadata, core.model, core.version, core.label, t), timeout)
                self._metadata = ModelMetadata.from_proto(response)
            meta = self._metadata
        if class_names and meta.class_names is None:
            info = core.info_inputs(meta)
            if info is not None:
                meta.class_names = core.class_names_from(await self.predict(info[0], info[1], timeout=timeout))
        return meta

    async def status(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> ModelStatus:
        core = self._core
        transport = self._get_transport()
        if core.grpc:
            request = core.status_request()
            response = await self._call("GetModelStatus", lambda t: transport.call("status", request, t), timeout,
                                        retry)
        else:
            response = await self._call("GetModelStatus", lambda t: asyncio.to_thread(
                transport.status, core.model, core.version, core.label, t), timeout, retry)
        return ModelStatus.from_proto(core.model, response)

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> ModelStatus:
        deadline = time.monotonic() + timeout
        last: object = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self._core.describe()} not ready after {timeout:g} s: {last}",
                                       code="NOT_READY", server=str(self._core.address))
            try:
                call_timeout = remaining if self._core.timeout is None else min(remaining, self._core.timeout)
                status = await self.status(timeout=call_timeout, retry=NO_RETRY)
                if self._core.ready(status, self._core.version):
                    return status
                last = "versions " + (", ".join(f"{v.version}: {v.state}" for v in status.versions) or "none")
            except (ServerUnavailable, ModelNotFound, DeadlineExceeded) as error:
                last = error
            await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))

    async def detect(self, image: ImageInput, *, score_threshold: float | None = None,
                     max_detections: int | None = None, timeout: float | None = None) -> list[Detection]:
        return (await self.detect_batch([image], score_threshold=score_threshold, max_detections=max_detections,
                                        timeout=timeout))[0]

    async def detect_batch(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                           max_detections: int | None = None, timeout: float | None = None) -> list[list[Detection]]:
        core = self._core
        images = list(images)
        if not images:
            return []
        meta = await self.metadata(timeout=timeout)
        # Decoding and resizing are CPU work: keep them off the event loop.
        loaded, chunks = await asyncio.to_thread(core.plan, meta, images)
        threshold = core.score_threshold if score_threshold is None else score_threshold
        limit = core.max_detections if max_detections is None else max_detections
        answers = await asyncio.gather(*(
            self.predict(chunk.signature, {chunk.signature.input.key: chunk.payload}, timeout=timeout,
                         output_filter=core.output_filter(chunk.signature)) for chunk in chunks))
        results: list[list[Detection]] = [[] for _ in images]
        for chunk, outputs in zip(chunks, answers, strict=True):
            for row, index in enumerate(chunk.indices):
                results[index] = core.detections(outputs, row, loaded[index], threshold, limit, meta.class_names)
        return results

    async def close(self) -> None:
        if self._transport is not None:
            result = self._transport.close()
            if asyncio.iscoroutine(result):
                await result
            self._transport = None

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

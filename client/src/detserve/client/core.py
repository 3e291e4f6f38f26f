"""Everything a detector client does, without I/O: its options, the metadata cache, and each public call as an
operation (a generator of :mod:`~detserve.client.steps`) that :class:`~detserve.client.Detector` and
:class:`~detserve.client.AsyncDetector` run with their drivers.

Which transport the server speaks is known only to the wire format (``self.wire``) and the transport.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .address import TlsConfig, parse_server
from .batching import ImageBatch, batch_images
from .contract import DETECTION_OUTPUTS, NUMERIC_OUTPUTS, ModelSpec
from .detections import Detection, detections_from
from .errors import DeadlineExceeded, DetserveClientError, InvalidInput, ModelNotFound, ServerUnavailable
from .images import ImageInput, LoadedImage, ResizeMethod, load_image
from .metadata import ModelMetadata, ModelStatus, Signature, class_names_from_info, model_info_inputs
from .retry import NO_RETRY, RetryPolicy, retrying
from .steps import Exclusive, Offload, Operation, Send, Sleep, Together
from .wire import Request, wire_for

__all__ = ["DetectorCore", "DetectionPlan", "ENCODINGS"]

ENCODINGS = ("auto", "raw", "jpeg", "png")


@dataclass(frozen=True)
class DetectionPlan:
    """What detect_batch sends: the signature, the loaded images and the requests that carry them."""

    signature: Signature
    images: list[LoadedImage]
    batches: list[ImageBatch]


class DetectorCore:
    """The options of a Detector / AsyncDetector (checked here, documented there) and its operations."""

    def __init__(self, server: str, model: str, version: int | None, label: str | None, *,
                 encoding: str, signature: str | None, score_threshold: float, max_detections: int | None,
                 timeout: float | None, retry: RetryPolicy | None, headers: dict[str, str] | None,
                 ca_cert, client_cert, client_key, server_name: str | None, max_message_bytes: int,
                 input_size: tuple[int, int] | None, resize_method: ResizeMethod, jpeg_quality: int,
                 max_batch_size: int):
        self.address = parse_server(server)
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
        self.model = ModelSpec(model, None if version is None else int(version), label)
        self.wire = wire_for(self.address, self.model)
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
        self._metadata: ModelMetadata | None = None

    def describe(self) -> str:
        model = self.model
        which = (f" version {model.version}" if model.version is not None
                 else f" label {model.label!r}" if model.label else "")
        return f"model {model.name!r}{which} at {self.address}"

    # -- operations ----------------------------------------------------------------------------------------------

    def exchange(self, request: Request, timeout: float | None = None, retry: RetryPolicy | None = None) -> Operation:
        """Send ``request`` (retried by the policy, all tries inside one deadline); its parsed answer."""
        timeout = self.timeout if timeout is None else timeout
        answer = yield from retrying(partial(Send, request), policy=retry or self.retry, timeout=timeout,
                                     what=f"{request.rpc} {self.describe()}")
        return request.parse(answer)

    def predict(self, signature: str | Signature, inputs: dict[str, Any], *, timeout: float | None = None,
                output_filter: Sequence[str] = ()) -> Operation[dict[str, np.ndarray]]:
        if isinstance(signature, str):
            meta = yield from self.metadata()
            signature = meta.signatures.get(signature) or Signature(signature, "", {}, {})
        return (yield from self.exchange(self.wire.predict(signature, inputs, output_filter), timeout))

    def metadata(self, *, refresh: bool = False, class_names: bool = False,
                 timeout: float | None = None) -> Operation[ModelMetadata]:
        meta = self._metadata
        if refresh or meta is None:  # a cache hit never waits; concurrent first calls share one fetch
            meta = yield Exclusive(self._cached_metadata(refresh, timeout))
        if class_names and meta.class_names is None:
            info = model_info_inputs(meta)
            if info is not None:
                meta.class_names = class_names_from_info((yield from self.predict(*info, timeout=timeout)))
        return meta

    def _cached_metadata(self, refresh: bool, timeout: float | None) -> Operation[ModelMetadata]:
        if refresh or self._metadata is None:
            self._metadata = yield from self.exchange(self.wire.metadata(), timeout)
        return self._metadata

    def status(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> Operation[ModelStatus]:
        return (yield from self.exchange(self.wire.status(), timeout, retry))

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Operation[ModelStatus]:
        deadline = time.monotonic() + timeout
        last: object = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.describe()} not ready after {timeout:g} s: {last}",
                                       code="NOT_READY", server=str(self.address))
            try:
                call_timeout = remaining if self.timeout is None else min(remaining, self.timeout)
                status = yield from self.status(timeout=call_timeout, retry=NO_RETRY)
                if status.is_available(self.model.version):
                    return status
                last = "versions " + (", ".join(f"{v.version}: {v.state}" for v in status.versions) or "none")
            except (ServerUnavailable, ModelNotFound, DeadlineExceeded) as error:
                last = error
            yield Sleep(max(0.0, min(interval, deadline - time.monotonic())))

    def detect_batch(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                     max_detections: int | None = None,
                     timeout: float | None = None) -> Operation[list[list[Detection]]]:
        images = list(images)
        if not images:
            return []
        meta = yield from self.metadata(timeout=timeout)
        plan = yield Offload(partial(self.plan, meta, images))  # decoding and resizing are CPU work
        signature = plan.signature
        output_filter = [key for key in DETECTION_OUTPUTS if key in signature.outputs]
        answers = yield Together([self.predict(signature, {signature.input.key: batch.payload}, timeout=timeout,
                                               output_filter=output_filter) for batch in plan.batches])
        threshold = self.score_threshold if score_threshold is None else score_threshold
        limit = self.max_detections if max_detections is None else max_detections
        results: list[list[Detection]] = [[] for _ in images]
        for batch, outputs in zip(plan.batches, answers, strict=True):
            missing = [key for key in NUMERIC_OUTPUTS if key not in outputs]
            if missing:
                raise DetserveClientError(f"{self.describe()} answered without {missing} (got {sorted(outputs)})",
                                          code="BAD_RESPONSE", server=str(self.address))
            for row, index in enumerate(batch.indices):
                results[index] = detections_from(outputs, row, plan.images[index], threshold, limit, meta.class_names)
        return results

    # -- detect_batch's request, decided once --------------------------------------------------------------------

    def plan(self, meta: ModelMetadata, images: Sequence[ImageInput]) -> DetectionPlan:
        """Load the images, pick the signature and encoding, and make the requests' payloads."""
        loaded = [load_image(image, index) for index, image in enumerate(images)]
        signature, encoding = self.request_format(meta)
        batches = batch_images(loaded, encoding, self.input_size or meta.input_size, resize_method=self.resize_method,
                               jpeg_quality=self.jpeg_quality, max_batch_size=self.max_batch_size)
        return DetectionPlan(signature, loaded, batches)

    def request_format(self, meta: ModelMetadata) -> tuple[Signature, str]:
        """The detection signature and the encoding of its input: "raw", "jpeg" or "png".

        ``encoding`` ("auto": the transport's default) picks the signature by its input type; a named
        ``signature`` instead fixes the input type, and the encoding follows it.
        """
        encoding = self.wire.default_encoding if self.encoding == "auto" else self.encoding
        if self.signature is None:
            signature = meta.image_signature if encoding == "raw" else meta.bytes_signature
            if signature is None:
                wanted = "uint8 images [B, H, W, 3]" if encoding == "raw" else "encoded images string [B]"
                other = "jpeg" if encoding == "raw" else "raw"
                raise ModelNotFound(f"{self.describe()} has no detection signature taking {wanted} (signatures: "
                                    f"{sorted(meta.signatures)}); try encoding={other!r}",
                                    code="NO_SIGNATURE", server=str(self.address))
            return signature, encoding
        signature = meta.signatures.get(self.signature)
        if signature is None:
            raise ModelNotFound(f"{self.describe()} has no signature {self.signature!r}; it has "
                                f"{sorted(meta.signatures)}", code="NO_SIGNATURE", server=str(self.address))
        if signature.input.dtype == "DT_UINT8":
            return signature, "raw"
        if signature.input.dtype == "DT_STRING":
            return signature, "png" if encoding == "png" else "jpeg"
        raise InvalidInput(f"signature {signature.name!r} takes {signature.input.dtype}; the client sends uint8 "
                           "images or encoded image strings", code="CLIENT", server=str(self.address))

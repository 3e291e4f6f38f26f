"""``Detector`` (blocking) and ``AsyncDetector`` (asyncio): one API over gRPC and REST.

Both run the same sans-I/O operations (:class:`~detserve.client.core.DetectorCore`) and differ only in the
driver that performs their I/O (:mod:`detserve.client.drivers`): each method is one call, awaited or not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from .contract import MAX_MESSAGE_BYTES
from .core import DetectorCore
from .detections import Box, Detection
from .drivers import AsyncDriver, BlockingDriver
from .images import ImageInput, ResizeMethod
from .metadata import ModelMetadata, ModelStatus, Signature
from .retry import DEFAULT_TIMEOUT, RetryPolicy
from .transport import open_transport

__all__ = ["Box", "Detection", "Detector", "AsyncDetector"]

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


class _DetectorBase(ABC):
    """The constructor and the properties both classes share; each class has its own driver and calls."""

    def __init__(self, server: str = "grpc://localhost:8500", model: str = "detector", version: int | None = None,
                 label: str | None = None, *, encoding: str = "auto", signature: str | None = None,
                 score_threshold: float = 0.0, max_detections: int | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 retry: RetryPolicy | None = None, headers: dict[str, str] | None = None, ca_cert=None,
                 client_cert=None, client_key=None, server_name: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, input_size: tuple[int, int] | None = None,
                 resize_method: ResizeMethod = "bilinear_legacy", jpeg_quality: int = 95, max_batch_size: int = 32):
        options = dict(locals())
        del options["self"]
        self._core = DetectorCore(**options)
        self._driver = self._make_driver()

    @abstractmethod
    def _make_driver(self) -> BlockingDriver | AsyncDriver:
        """The driver that runs this class's calls."""

    def _open_transport(self, asynchronous: bool):
        core = self._core
        return open_transport(core.address, tls=core.tls, headers=core.headers,
                              max_message_bytes=core.max_message_bytes, asynchronous=asynchronous)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.server!r}, model={self._core.model.name!r})"

    @property
    def server(self) -> str:
        return str(self._core.address)


class Detector(_DetectorBase):
    """Blocking client for a detector served by TF Serving or ``detserve serve``.

    Thread-safe: one gRPC channel / one HTTP session per Detector, shared by all calls and threads.
    Use it as a context manager or call :meth:`close`.
    """

    __doc__ += _COMMON_DOC

    def _make_driver(self) -> BlockingDriver:
        return BlockingDriver(self._open_transport(asynchronous=False))

    def predict(self, signature: str | Signature, inputs: dict[str, Any], *, timeout: float | None = None,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Predict with any signature: ``inputs`` maps input keys to numpy arrays or lists of bytes."""
        return self._driver.run(self._core.predict(signature, inputs, timeout=timeout, output_filter=output_filter))

    def metadata(self, *, refresh: bool = False, class_names: bool = False,
                 timeout: float | None = None) -> ModelMetadata:
        """The model's signatures and input size (cached); ``class_names=True`` also asks the model for its
        label map (one Predict call to its ``model_info`` signature)."""
        return self._driver.run(self._core.metadata(refresh=refresh, class_names=class_names, timeout=timeout))

    def status(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> ModelStatus:
        """GetModelStatus: the state of each version of the model."""
        return self._driver.run(self._core.status(timeout=timeout, retry=retry))

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> ModelStatus:
        """Poll :meth:`status` until the model (or the pinned version) is AVAILABLE; raise
        :class:`DeadlineExceeded` naming the last problem after ``timeout`` seconds."""
        return self._driver.run(self._core.wait_until_ready(timeout, interval))

    def detect(self, image: ImageInput, *, score_threshold: float | None = None, max_detections: int | None = None,
               timeout: float | None = None) -> list[Detection]:
        """Detect objects in one image (a path, bytes, a PIL image or an HxWx3 uint8 RGB array)."""
        return self.detect_batch([image], score_threshold=score_threshold, max_detections=max_detections,
                                 timeout=timeout)[0]

    def detect_batch(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                     max_detections: int | None = None, timeout: float | None = None) -> list[list[Detection]]:
        """Detect objects in several images: batched Predict requests of up to ``max_batch_size`` images."""
        return self._driver.run(self._core.detect_batch(images, score_threshold=score_threshold,
                                                        max_detections=max_detections, timeout=timeout))

    def close(self) -> None:
        self._driver.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncDetector(_DetectorBase):
    """asyncio client: ``grpc.aio`` for gRPC servers (one channel, any number of concurrent calls); for
    REST servers the blocking session runs in worker threads. Same arguments and methods as
    :class:`Detector`, as coroutines. Create it (or at least call it first) inside the running loop.
    """

    __doc__ += _COMMON_DOC

    def _make_driver(self) -> AsyncDriver:
        return AsyncDriver(lambda: self._open_transport(asynchronous=True))

    async def predict(self, signature: str | Signature, inputs: dict[str, Any], *, timeout: float | None = None,
                      output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        return await self._driver.run(self._core.predict(signature, inputs, timeout=timeout,
                                                         output_filter=output_filter))

    async def metadata(self, *, refresh: bool = False, class_names: bool = False,
                       timeout: float | None = None) -> ModelMetadata:
        return await self._driver.run(self._core.metadata(refresh=refresh, class_names=class_names, timeout=timeout))

    async def status(self, *, timeout: float | None = None, retry: RetryPolicy | None = None) -> ModelStatus:
        return await self._driver.run(self._core.status(timeout=timeout, retry=retry))

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> ModelStatus:
        return await self._driver.run(self._core.wait_until_ready(timeout, interval))

    async def detect(self, image: ImageInput, *, score_threshold: float | None = None,
                     max_detections: int | None = None, timeout: float | None = None) -> list[Detection]:
        return (await self.detect_batch([image], score_threshold=score_threshold, max_detections=max_detections,
                                        timeout=timeout))[0]

    async def detect_batch(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                           max_detections: int | None = None, timeout: float | None = None) -> list[list[Detection]]:
        return await self._driver.run(self._core.detect_batch(images, score_threshold=score_threshold,
                                                              max_detections=max_detections, timeout=timeout))

    async def close(self) -> None:
        await self._driver.close()

    async def __aenter__(self) -> AsyncDetector:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

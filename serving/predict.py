"""The data plane: predict, metadata and status on numpy arrays and SignatureDefs, for every front end.

gRPC, REST and the warmup replay only decode a request into a :class:`PredictCall` and encode the
:class:`Prediction` back, as TF Serving's REST handler builds a PredictRequest and calls the same predictor as
gRPC. The one predict sequence (:meth:`DataPlane.predict`): the version a request names, its Predict signature,
the output filter, the inputs decoded against the signature, validation, execution.

Validation follows TF Serving's ``PreProcessPrediction`` (same checks, same messages where it has them), and
adds the checks TF Serving leaves to the TensorFlow runtime, so each mistake gets a message that names it:
wrong dtype, wrong rank or fixed dimension, an empty batch, an image above the pixel limit, bytes that claim to
be an image TensorFlow decodes but whose header cannot be read (``image_headers``). One validation runs on each
input's (dtype, shape): on the TensorProto headers for gRPC and warmup, before any value is decoded (a few bytes
can declare gigabytes), on the arrays for REST. Decoding and validating run in the request thread pool unless
the front end marks the request small, and execution goes through the batch scheduler when batching is on and
the signature can be batched, else straight to the thread pool: the event loop never runs TensorFlow, nor
parses a large request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from detserve.client.contract import (
    DEFAULT_SIGNATURE,
    MAX_IMAGE_PIXELS,
    MAX_MESSAGE_BYTES,
    PREDICT_METHOD,
    ModelSpec,
)

from .batching import BatchScheduler, shape_key
from .errors import Code, ServingError, invalid_argument, unavailable
from .image_headers import HeaderError, UncheckableFormat, read_header
from .manager import Handle, ModelManager
from .metrics import ServingMetrics
from .servable import Servable, Signature
from .tensors import Shape, dtype_enum_of, dtype_name, short_dtype_name
from .versions import VersionStatus

Inputs = Mapping[str, np.ndarray]
# Turns the request's inputs into numpy arrays once its signature is known (REST needs the declared dtypes).
Decoder = Callable[[Signature], Inputs]
# Each input's (dtype enum, shape), as validated.
Described = Mapping[str, tuple[int, Shape]]


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # The largest tensor a request may make TensorFlow build by repeating a short typed field (--max-message-bytes).
    max_message_bytes: int = MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class PredictCall:
    """A Predict request as the front ends decode it."""

    model: ModelSpec
    signature_name: str
    decode: Decoder
    output_filter: Sequence[str] = ()
    # The input aliases, when the front end knows them before decoding (gRPC's map keys): they are checked
    # against the signature first, as TF Serving does, so a misnamed input is named and nothing is decoded.
    input_names: frozenset[str] | None = None
    # The inputs' (dtype, shape) from their headers, when the front end can read them before decoding the values
    # (TensorProtos): validated first, so a request declaring a huge tensor is refused before it is allocated.
    describe: Callable[[], Described] | None = None
    # The front end knows the request is small (codec.SMALL_REQUEST_BYTES, rest._OFFLOAD_JSON_BYTES): decoding it
    # on the event loop costs less than the hop to the thread pool. Anything else is decoded and validated off it.
    small: bool = False


@dataclass(frozen=True)
class Prediction:
    """The answer: which version and signature ran, and the requested outputs (in the order asked for)."""

    name: str
    version: int
    signature: Signature
    outputs: dict[str, np.ndarray]


class SignatureNotFound(ServingError):
    """The request names a signature the version does not have (REST answers it with its own message)."""

    def __init__(self, name: str):
        super().__init__(Code.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        self.signature_name = name


def _names(keys) -> str:
    return ",".join(sorted(keys))


class DataPlane:
    def __init__(self, manager: ModelManager, executor: concurrent.futures.Executor,
                 scheduler: BatchScheduler | None = None, limits: Limits = Limits(),
                 metrics: ServingMetrics | None = None):
        self.manager = manager
        self.executor = executor
        self.scheduler = scheduler
        self.limits = limits
        self.metrics = metrics or ServingMetrics()
        # Shutdown (SIGTERM): new calls are answered UNAVAILABLE, which clients retry elsewhere or on the next
        # process, while the predictions already running finish (``drain``).
        self.draining = False
        self._running = 0
        self._idle = asyncio.Event()

    # -- the three operations -----------------------------------------------------------------------------

    async def predict(self, call: PredictCall) -> Prediction:
        """Run a request on the version it names (ServingError on any failure)."""
        self._running += 1
        try:
            return await self._predict(call)
        finally:
            self._running -= 1
            if self.draining and not self._running:
                self._idle.set()

    async def _predict(self, call: PredictCall) -> Prediction:
        with self._acquire(call.model) as handle:
            if call.small:
                signature, wanted, inputs, batch_size = self._prepare(handle.servable, call)
            else:
                signature, wanted, inputs, batch_size = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._prepare, handle.servable, call)
            started = time.perf_counter()
            future = self._submit(handle.servable, signature, inputs, batch_size)
            try:
                outputs = await asyncio.wrap_future(future)
            except asyncio.CancelledError:  # the client went away (or its deadline passed); the work may be queued
                handle.hold_until(future)
                raise
            self.metrics.runtime_latency.observe(call.model.name, "Predict", "TF2",
                                                 (time.perf_counter() - started) * 1e6)
            return Prediction(handle.name, handle.version, signature, {alias: outputs[alias] for alias in wanted})

    def predict_loading(self, servable: Servable, call: PredictCall) -> None:
        """Run a request on a version that is loading (warmup): the same sequence, before it is AVAILABLE."""
        signature, _, inputs, batch_size = self._prepare(servable, call)
        self._submit(servable, signature, inputs, batch_size).result()

    def metadata(self, model: ModelSpec) -> tuple[str, int, object]:
        """GetModelMetadata's content: the version's name and number, and its SignatureDefMap."""
        with self._acquire(model) as handle:
            return handle.name, handle.version, handle.servable.signature_defs

    async def drain(self, timeout: float) -> bool:
        """Answer new calls UNAVAILABLE from now on and wait (up to ``timeout`` s) until the predictions already
        running have finished; True if they have. Listeners stay open meanwhile: a request that reaches the server
        after SIGTERM gets a fast, retryable answer instead of being cut off when the listeners close."""
        self.draining = True
        if not self._running:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise unavailable("The server is shutting down (SIGTERM): retry the request, it will reach another "
                              "replica or the restarted server")

    def status(self, model: ModelSpec) -> list[VersionStatus]:
        """GetModelStatus: one version's state, or every version seen, newest first. A label is ignored, known or
        not, as TF Serving's GetModelStatusImpl reads only ``model_spec.version`` (its REST status calls it too)."""
        self._refuse_if_draining()  # a draining replica is not ready: readiness probes see it
        return self.manager.status(model.name, model.version)

    # -- the predict sequence -----------------------------------------------------------------------------

    def _acquire(self, model: ModelSpec) -> Handle:
        self._refuse_if_draining()
        if not model.name:
            raise invalid_argument("Missing model name in request.")
        return self.manager.acquire(model.name, model.version, model.label)

    def _prepare(self, servable: Servable, call: PredictCall) -> tuple[Signature, list[str], Inputs, int | None]:
        signature = _signature(servable, call.signature_name)
        wanted = _outputs_for(signature, call.output_filter)
        if call.input_names is not None:
            _check_input_names(signature, call.input_names)
        described = call.describe() if call.describe is not None else None
        if described is not None:
            batch_size = self._validate(signature, described)
        inputs = call.decode(signature)
        if call.input_names is None:
            _check_input_names(signature, inputs.keys())
        if described is None:
            batch_size = self._validate(signature, {alias: (dtype_enum_of(array), array.shape)
                                                    for alias, array in inputs.items()})
        for alias, array in inputs.items():
            if signature.inputs[alias].dtype == types_pb2.DT_STRING:
                self._check_encoded_images(alias, array)
        return signature, wanted, inputs, batch_size

    def _submit(self, servable: Servable, signature: Signature, inputs: Inputs,
                batch_size: int | None) -> concurrent.futures.Future:
        if self.scheduler is not None and batch_size is not None:
            key = (servable.name, servable.version, id(servable), signature.name, shape_key(inputs))
            return self.scheduler.submit(key, signature.run, inputs, batch_size)
        return self.executor.submit(signature.run, inputs)

    # -- validation ---------------------------------------------------------------------------------------

    def _validate(self, signature: Signature, described: Described) -> int | None:
        """Check every input's (dtype, shape) against the signature and the limits; returns the batch size (None
        if the signature is not batched or the inputs disagree on it). The input names are checked already."""
        batch_sizes = {}
        for alias, (got, shape) in described.items():
            spec = signature.inputs[alias]
            if got != spec.dtype:
                raise invalid_argument(
                    f"input {alias!r} expects {short_dtype_name(spec.dtype)} ({dtype_name(spec.dtype)}) but "
                    f"{short_dtype_name(got)} ({dtype_name(got)}) is provided")
            if spec.shape is not None:
                expected = "[" + ",".join("-1" if d is None else str(d) for d in spec.shape) + "]"
                if len(shape) != len(spec.shape):
                    raise invalid_argument(f"input {alias!r} must have rank {len(spec.shape)} (shape {expected}), "
                                           f"got shape {list(shape)}")
                for axis, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):
                    if want is not None and want != have:
                        raise invalid_argument(f"input {alias!r} must have shape {expected}, got {list(shape)} "
                                               f"(dimension {axis} is {have}, not {want})")
                if spec.shape and spec.shape[0] is None:
                    if shape[0] == 0:
                        raise invalid_argument(f"input {alias!r} is an empty batch (0 rows): send at least one")
                    batch_sizes[alias] = shape[0]
            limit = self.limits.max_image_pixels
            if spec.dtype != types_pb2.DT_STRING and len(shape) == 4 and shape[-1] in (1, 3, 4):
                height, width = shape[1], shape[2]
                if height * width == 0:  # the graph would answer NaN scores or fail in its resize
                    raise invalid_argument(f"input {alias!r}: {height}x{width} images (0 pixels, shape {list(shape)}) "
                                           "are empty: send images of at least 1x1 pixels")
                if height * width > limit:
                    raise invalid_argument(
                        f"input {alias!r}: {height}x{width} images ({height * width} pixels) exceed the server's "
                        f"limit of {limit} pixels per image")
        if signature.batchable and len(set(batch_sizes.values())) > 1:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size; got "
                                   + ", ".join(f"{a}: {batch_sizes[a]}" for a in sorted(batch_sizes)))
        return next(iter(batch_sizes.values())) if signature.batchable and batch_sizes else None

    def _check_encoded_images(self, alias: str, array: np.ndarray) -> None:
        """Each string that starts like an image TensorFlow decodes: its header's size within the limit."""
        limit = self.limits.max_image_pixels
        for index, value in enumerate(array.ravel().tolist()):
            if not isinstance(value, bytes):
                continue
            where = f"input {alias!r}[{index}]"
            try:
                header = read_header(value)
            except HeaderError as error:
                raise invalid_argument(f"{where}: corrupt image bytes: {error}") from None
            except UncheckableFormat as error:
                raise invalid_argument(f"{where}: {error} images are not accepted: the server cannot read their "
                                       f"size to check it against its limit of {limit} pixels per image") from None
            if header is not None and header.pixels > limit:
                raise invalid_argument(f"{where}: a {header.describe()} ({header.pixels} pixels) exceeds "
                                       f"the server's limit of {limit} pixels per image")


def _signature(servable: Servable, name: str) -> Signature:
    """The signature a request names (serving_default when empty), checked to be a Predict signature."""
    name = name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None or signature.function is None:
        raise SignatureNotFound(name)
    if signature.method_name != PREDICT_METHOD:
        raise invalid_argument(f"Expected prediction signature method_name to be {PREDICT_METHOD}. "
                               f"Was: {signature.method_name}")
    return signature


def _outputs_for(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be "
                                   f"in the set {{{_names(signature.outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def _check_input_names(signature: Signature, sent) -> None:
    sent, expected = set(sent), set(signature.inputs)
    if len(sent) != len(expected):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_names(sent)}}}) != "
            f"len({{{_names(expected)}}}). Sent extra: {{{_names(sent - expected)}}}. Missing but required: "
            f"{{{_names(expected - sent)}}}.")
    for alias in sorted(sent - expected):
        raise invalid_argument(f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                               f"the set {{{_names(expected)}}}.")


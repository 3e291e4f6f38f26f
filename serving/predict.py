"""Predict, shared by the gRPC and REST front ends: request validation, limits, execution, warmup.

Validation follows TF Serving's ``PreProcessPrediction`` (same checks, same messages where it has them), and
adds the checks TF Serving leaves to the TensorFlow runtime, so each mistake gets a message that names it:
wrong dtype, wrong rank or fixed dimension, an empty batch, an image above the pixel limit, bytes that claim to
be a JPEG/PNG/GIF but whose header cannot be read. Execution goes through the batch scheduler when batching is
on and the signature can be batched, else straight to a thread pool; either way the event loop never runs
TensorFlow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from detserve.client.contract import DEFAULT_SIGNATURE, MAX_IMAGE_PIXELS, PREDICT_METHOD
from detserve.serving.batching import BatchScheduler, shape_key
from detserve.serving.errors import ServingError, failed_precondition, invalid_argument
from detserve.serving.manager import Handle, ModelManager
from detserve.serving.servable import Servable, Signature
from detserve.serving.tensors import dtype_enum_of, dtype_name, short_dtype_name, to_ndarray

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def _names(keys) -> str:
    return ",".join(sorted(keys))


class PredictionCore:
    def __init__(self, manager: ModelManager, executor: concurrent.futures.Executor,
                 scheduler: BatchScheduler | None = None, limits: Limits = Limits()):
        self.manager = manager
        self.executor = executor
        self.scheduler = scheduler
        self.limits = limits

    # -- model spec ---------------------------------------------------------------------------------------

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Handle:
        if not name:
            raise invalid_argument("Missing model name in request.")
        return self.manager.acquire(name, version, label)

    @staticmethod
    def signature(servable: Servable, name: str, *, rest: bool = False) -> Signature:
        """The signature a request names (serving_default when empty), checked to be a Predict signature."""
        name = name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None or signature.function is None:
            if rest:  # the REST handler's own lookup (GetInfoMap) answers INVALID_ARGUMENT
                raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        if signature.method_name != PREDICT_METHOD:
            raise invalid_argument(f"Expected prediction signature method_name to be {PREDICT_METHOD}. "
                                   f"Was: {signature.method_name}")
        return signature

    # -- validation ---------------------------------------------------------------------------------------

    @staticmethod
    def outputs_for(signature: Signature, output_filter: Sequence[str]) -> list[str]:
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

    @staticmethod
    def parse_tensor_protos(signature: Signature, protos: Mapping) -> dict[str, np.ndarray]:
        PredictionCore.check_input_names(signature, protos.keys())
        return {alias: to_ndarray(proto, alias) for alias, proto in protos.items()}

    @staticmethod
    def check_input_names(signature: Signature, sent) -> None:
        sent, expected = set(sent), set(signature.inputs)
        if len(sent) != len(expected):
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_names(sent)}}}) != "
                f"len({{{_names(expected)}}}). Sent extra: {{{_names(sent - expected)}}}. Missing but required: "
                f"{{{_names(expected - sent)}}}.")
        for alias in sorted(sent - expected):
            raise invalid_argument(f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                                   f"the set {{{_names(expected)}}}.")

    def validate(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> int | None:
        """Check every input against the signature and the limits; returns the batch size (None if the
        signature is not batched or the inputs disagree on it)."""
        self.check_input_names(signature, inputs.keys())
        batch_sizes = set()
        for alias, array in inputs.items():
            spec = signature.inputs[alias]
            got = dtype_enum_of(array)
            if got != spec.dtype:
                raise invalid_argument(
                    f"input {alias!r} expects {short_dtype_name(spec.dtype)} ({dtype_name(spec.dtype)}) but "
                    f"{short_dtype_name(got)} ({dtype_name(got)}) is provided")
            shape = array.shape
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
                    batch_sizes.add(shape[0])
            self._check_images(alias, spec.dtype, array)
        if signature.batchable and len(batch_sizes) > 1:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size; got "
                                   + ", ".join(f"{a}: {inputs[a].shape[0]}" for a in sorted(inputs)))
        return batch_sizes.pop() if signature.batchable and len(batch_sizes) == 1 else None

    def _check_images(self, alias: str, dtype: int, array: np.ndarray) -> None:
        limit = self.limits.max_image_pixels
        if dtype == types_pb2.DT_STRING:
            for index, value in enumerate(array.ravel().tolist()):
                if isinstance(value, bytes) and value.startswith(_IMAGE_MAGIC):
                    width, height = _image_size(value, alias, index)
                    if width * height > limit:
                        raise invalid_argument(
                            f"input {alias!r}[{index}]: a {width}x{height} image ({width * height} pixels) exceeds "
                            f"the server's limit of {limit} pixels per image")
        elif array.ndim == 4 and array.shape[-1] in (1, 3, 4):
            height, width = array.shape[1], array.shape[2]
            if height * width > limit:
                raise invalid_argument(
                    f"input {alias!r}: {height}x{width} images ({height * width} pixels) exceed the server's limit "
                    f"of {limit} pixels per image")

    # -- execution ----------------------------------------------------------------------------------------

    def _submit(self, servable: Servable, signature: Signature, inputs: Mapping[str, np.ndarray],
                batch_size: int | None) -> concurrent.futures.Future:
        if self.scheduler is not None and batch_size is not None:
            key = (servable.name, servable.version, id(servable), signature.name,
                   shape_key(inputs, self.scheduler.options.pad_variable_length_inputs))
            return self.scheduler.submit(key, signature.run, inputs, batch_size)
        return self.executor.submit(signature.run, inputs)

    async def run(self, handle: Handle, signature: Signature, inputs: Mapping[str, np.ndarray],
                  batch_size: int | None) -> dict[str, np.ndarray]:
        """All outputs of the signature for validated inputs (ServingError on failure)."""
        future = self._submit(handle.servable, signature, inputs, batch_size)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client went away (or its deadline passed); the work may be queued
            handle.hold_until(future)
            raise

    def run_blocking(self, servable: Servable, signature: Signature, inputs: Mapping[str, np.ndarray],
                     batch_size: int | None) -> dict[str, np.ndarray]:
        return self._submit(servable, signature, inputs, batch_size).result()

    def warmup(self, servable: Servable) -> None:
        """Replay ``assets.extra/tf_serving_warmup_requests`` through the request path (batching included);
        any failure fails the load, as in TF Serving."""
        records = servable.warmup_records()
        replayed = 0
        for index, record in enumerate(records):
            kind = record.WhichOneof("log_type")
            if kind != "predict_log":
                log.warning("%s version %d: warmup record %d is a %s, which this server does not serve; skipped",
                            servable.name, servable.version, index, kind)
                continue
            request = record.predict_log.request
            try:
                signature = self.signature(servable, request.model_spec.signature_name)
                inputs = self.parse_tensor_protos(signature, request.inputs)
                batch_size = self.validate(signature, inputs)
                self.run_blocking(servable, signature, inputs, batch_size)
            except ServingError as error:
                raise ServingError(error.code, f"warmup record {index}: {error.message}") from None
            replayed += 1
        if records:
            log.info("%s version %d: replayed %d warmup record(s)", servable.name, servable.version, replayed)


def _image_size(data: bytes, alias: str, index: int) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise invalid_argument(f"input {alias!r}[{index}]: corrupt image bytes ({len(data)} bytes): {error}") from None

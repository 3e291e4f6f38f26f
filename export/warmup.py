"""``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays when a version loads.

TF Serving reads the file (a TFRecord of serialized ``tensorflow.serving.PredictionLog``) after loading a
version and before serving it, running each ``predict_log.request`` through the same session real requests
use, i.e. through the batching session when ``--enable_batching`` is on. So:

- one record per signature and batch size, so every padded batch shape a server can form has run once:
  the union of the batching configs' ``allowed_batch_sizes`` (each server pads a record of another config's
  size up to one of its own, which is harmless);
- but no size any server of this repository would reject: with batching on, a request larger than the
  config's ``max_batch_size`` fails ("Task size N is larger than maximum input batch size"), a failed
  warmup request fails the load, and one exported version is served by both the CPU and the GPU config.
  So the union stops at the smallest ``max_batch_size`` (1-8, 12, 16, 24, 32 for serving/);
- at most 1000 records (TF Serving's ``kMaxNumRecords``; more fails the load);
- small images (the graph resizes to the model's input size, so the compute path is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detserve.client.contract import (  # noqa: F401  (WARMUP_FILENAME re-exported)
    BYTES_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODED_INPUT,
    IMAGES_INPUT,
    MAX_WARMUP_RECORDS,
    WARMUP_FILENAME,
    warmup_path,
)

from .images import encode_image

FALLBACK_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
WARMUP_IMAGE_SIZE = 64


@dataclass
class BatchSizes:
    sizes: list[int]
    sources: list[str]  # where they came from, for the summary
    notes: list[str]


def _parse_allowed_batch_sizes(text: str, source: str) -> tuple[list[int], int | None]:
    """``allowed_batch_sizes`` and ``max_batch_size`` of a BatchingParameters text proto."""
    from google.protobuf import text_format

    from detserve.serving import tfs_config

    try:
        parsed = tfs_config.parse_text(text, tfs_config.BatchingParameters, source)
    except text_format.ParseError as error:
        raise ValueError(f"cannot parse batching config {error}") from error
    max_batch = parsed.max_batch_size.value if parsed.HasField("max_batch_size") else None
    return [int(s) for s in parsed.allowed_batch_sizes], max_batch


def warmup_batch_sizes(batching_configs: Sequence[Path | str]) -> BatchSizes:
    """Batch sizes any given batching config pads to, up to the smallest ``max_batch_size`` (see the module
    docstring). A config without ``allowed_batch_sizes`` contributes powers of two up to its maximum.

    A missing file is skipped with a note; with no file at all, 1..32 in powers of two.
    """
    union: set[int] = set()
    limit: int | None = None
    sources, notes = [], []
    for path in map(Path, batching_configs):
        if not path.is_file():
            notes.append(f"batching config {path} not found; warmup batch sizes ignore it")
            continue
        allowed, max_batch = _parse_allowed_batch_sizes(path.read_text(), str(path))
        if not allowed:
            allowed = [b for b in FALLBACK_BATCH_SIZES if max_batch is None or b <= max_batch]
            notes.append(f"{path} has no allowed_batch_sizes; using {allowed}")
        if max_batch is not None:
            limit = max_batch if limit is None else min(limit, max_batch)
        sources.append(str(path))
        union.update(allowed)
    if not sources:
        notes.append(f"no batching config found; warmup batch sizes default to {list(FALLBACK_BATCH_SIZES)}")
        union = set(FALLBACK_BATCH_SIZES)
    sizes = sorted(b for b in union if limit is None or b <= limit)
    if not sizes:
        sizes = [1]
        notes.append("no allowed batch size fits every config's max_batch_size; warming up batch 1 only")
    return BatchSizes(sizes=sizes, sources=sources, notes=notes)


def warmup_image() -> np.ndarray:
    """A deterministic, textured uint8 image (not flat, so decode and NMS do real work)."""
    size = WARMUP_IMAGE_SIZE
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([(x * 255 // max(size - 1, 1)), (y * 255 // max(size - 1, 1)), ((x + y) * 4) % 256], axis=-1)
    return image.astype(np.uint8)


@dataclass
class WarmupInfo:
    path: Path
    records: int
    batch_sizes: list[int]
    signatures: list[str]
    size_bytes: int
    notes: list[str]


def write_warmup_file(version_path: Path | str, model_name: str, batch_sizes: BatchSizes) -> WarmupInfo:
    """Write ``<version>/assets.extra/tf_serving_warmup_requests``: one Predict request per signature and size."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    image = warmup_image()
    jpeg = encode_image(image, "JPEG")
    path = warmup_path(version_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, key, make in (
            (DEFAULT_SIGNATURE, IMAGES_INPUT, lambda b: tf.make_tensor_proto(np.repeat(image[np.newaxis], b, axis=0))),
            (BYTES_SIGNATURE, ENCODED_INPUT, lambda b: tf.make_tensor_proto([jpeg] * b, dtype=tf.string, shape=[b])),
        ):
            for batch in batch_sizes.sizes:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = signature
                request.inputs[key].CopyFrom(make(batch))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
                records += 1
    if records > MAX_WARMUP_RECORDS:
        raise ValueError(f"{records} warmup records; TF Serving refuses more than {MAX_WARMUP_RECORDS}")
    return WarmupInfo(path=path, records=records, batch_sizes=list(batch_sizes.sizes),
                      signatures=[DEFAULT_SIGNATURE, BYTES_SIGNATURE], size_bytes=path.stat().st_size,
                      notes=list(batch_sizes.notes))


def read_warmup_file(path: Path | str) -> list:
    """The PredictionLog records of a warmup file (what TF Serving parses at load)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs

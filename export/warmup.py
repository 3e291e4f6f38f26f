"""``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays when a version loads.

TF Serving reads the file (a TFRecord of serialized ``tensorflow.serving.PredictionLog``) after loading a
version and before serving it, running each ``predict_log.request`` through the same session real requests
use, i.e. through the batching session when ``--enable_batching`` is on. So:

- one record per signature and batch size, so that every batch shape a server can form has run once. The
  shapes a config forms (:func:`formable_batch_sizes`) are its ``allowed_batch_sizes`` (a batch is padded up
  to one of them), or every size up to the largest batch without them; with ``enable_large_batch_splitting``
  the largest batch is ``max_execution_batch_size``, not ``max_batch_size``. A record of another config's
  size is padded up to one of this server's sizes, which is harmless;
- but no size any server of the repository would reject: with batching on, a request larger than the
  config's ``max_batch_size`` fails ("Task size N is larger than maximum input batch size"; with splitting
  that limit is still ``max_batch_size``), a failed warmup request fails the load. So with several configs
  the sizes stop at the smallest ``max_batch_size``, and what one config forms beyond it is listed in
  ``BatchSizes.unwarmed`` (and a note). serving/ ships a CPU config (max 32) and a GPU config (max 64): a
  version for both is warmed to 32; export for the servers that load it (``detserve export --warmup-for
  gpu``) and every shape is warmed;
- at most 1000 records (TF Serving's ``kMaxNumRecords``; more fails the load);
- or one record per signature at one of those sizes, for CPU servers: ``batches="smallest"`` (``detserve export
  --warmup-batches smallest``) or ``"largest"``. On a CPU the first call of a signature is what costs (graph
  optimisation and executor set-up, 0.23-0.3 s of one core on the face-mask model), whatever its batch size;
  after it, each other size's first request costs 7-30 ms more than its next one (54 ms at 32), where a record
  of that size would have cost its full batch. ``smallest`` pays only the first calls: the cheapest load, and
  the least CPU taken from live requests during a version swap (docs/performance.md); ``largest`` also builds
  the largest batch's buffers, for servers whose first full batch must not pay those 54 ms. On a GPU every
  shape builds and autotunes its own kernels: keep every size there (the default);
- small images (the graph resizes to the model's input size, so the compute path is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # tfs_config loads TF Serving's protos: imported where it parses
    from detserve.serving.tfs_config import BatchingParameters

FALLBACK_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# What ``warmup_batch_sizes`` keeps of the formable sizes: every one, or only the largest or smallest (docstring).
WARMUP_BATCHES = ("all", "largest", "smallest")
WARMUP_IMAGE_SIZE = 64
# One record per batch size for each of these (write_warmup_file).
WARMUP_SIGNATURES = (DEFAULT_SIGNATURE, BYTES_SIGNATURE)


@dataclass
class BatchSizes:
    sizes: list[int]
    sources: list[str]  # where they came from, for the summary
    notes: list[str]
    # Per config: batch sizes it forms that are not warmed, because another config rejects requests that large.
    unwarmed: dict[str, list[int]] = field(default_factory=dict)


def _parse_batching(text: str, source: str) -> BatchingParameters:
    """A BatchingParameters text proto, parsed as TF Serving parses it."""
    from google.protobuf import text_format

    from detserve.serving import tfs_config

    try:
        return tfs_config.parse_text(text, tfs_config.BatchingParameters, source)
    except text_format.ParseError as error:
        raise ValueError(f"cannot parse batching config {error}") from error


def largest_request(params: BatchingParameters) -> int:
    """The largest request (task) a server with these BatchingParameters accepts: ``max_batch_size``."""
    from detserve.serving.config import DEFAULT_MAX_BATCH_SIZE

    return params.max_batch_size.value if params.HasField("max_batch_size") else DEFAULT_MAX_BATCH_SIZE


def formable_batch_sizes(params: BatchingParameters) -> list[int]:
    """Every batch size a server with these BatchingParameters runs: the padded sizes of all batches it can
    form (``allowed_batch_sizes``, or 1..the largest batch without them). The largest batch is
    ``max_execution_batch_size`` with ``enable_large_batch_splitting`` (default: ``max_batch_size``), as in
    TF Serving's ``GetQueueOptions`` (servables/tensorflow/bundle_factory_util.h)."""
    largest = largest_request(params)
    if params.enable_large_batch_splitting.value and params.HasField("max_execution_batch_size"):
        largest = params.max_execution_batch_size.value
    allowed = [int(s) for s in params.allowed_batch_sizes]
    if allowed:
        return [s for s in allowed if s <= largest]
    return list(range(1, largest + 1))


def warmup_batch_sizes(batching_configs: Sequence[Path | str], batches: str = "all") -> BatchSizes:
    """The batch sizes to warm for servers reading any of ``batching_configs``: every size each config forms,
    up to the smallest ``max_batch_size``, or with ``batches="largest"``/``"smallest"`` only the largest or the
    smallest of them (see the module docstring).

    A missing file is skipped with a note; with no file at all, 1..32 in powers of two. Raises ValueError naming
    the file when a config forms more sizes than a warmup file can hold.
    """
    if batches not in WARMUP_BATCHES:
        raise ValueError(f"warmup batches must be {', '.join(WARMUP_BATCHES[:-1])} or {WARMUP_BATCHES[-1]}; "
                         f"got {batches!r}")
    sizes = _formable_sizes(batching_configs)
    if batches != "all" and len(sizes.sizes) > 1:
        kept = sizes.sizes[-1] if batches == "largest" else sizes.sizes[0]
        others = [size for size in sizes.sizes if size != kept]
        sizes.notes.append(f"warmup at batch {kept} only (--warmup-batches {batches}): on a CPU the other sizes "
                           f"{others} cost their first request 7-54 ms more; on a GPU warm every size")
        sizes.sizes = [kept]
    return sizes


def _formable_sizes(batching_configs: Sequence[Path | str]) -> BatchSizes:
    """Every size the configs form, up to the smallest ``max_batch_size``, and what is left out (by config)."""
    formed: dict[str, list[int]] = {}
    limit: int | None = None
    notes: list[str] = []
    for path in map(Path, batching_configs):
        if not path.is_file():
            notes.append(f"batching config {path} not found; warmup batch sizes ignore it")
            continue
        params = _parse_batching(path.read_text(), str(path))
        sizes = formable_batch_sizes(params)
        room = MAX_WARMUP_RECORDS // len(WARMUP_SIGNATURES)
        if len(sizes) > room:
            raise ValueError(f"{path}: forms {len(sizes)} batch sizes (no allowed_batch_sizes, largest batch "
                             f"{sizes[-1]}); a warmup file holds at most {room} per signature: set "
                             "allowed_batch_sizes")
        formed[str(path)] = sizes
        request_limit = largest_request(params)
        limit = request_limit if limit is None else min(limit, request_limit)
    if not formed:
        notes.append(f"no batching config found; warmup batch sizes default to {list(FALLBACK_BATCH_SIZES)}")
        return BatchSizes(sizes=list(FALLBACK_BATCH_SIZES), sources=[], notes=notes)
    union = {size for sizes in formed.values() for size in sizes}
    warmed = sorted(size for size in union if size <= limit)
    unwarmed = {source: [s for s in sizes if s > limit] for source, sizes in formed.items()}
    unwarmed = {source: sizes for source, sizes in unwarmed.items() if sizes}
    for source, sizes in unwarmed.items():
        notes.append(f"batch sizes {sizes} of {source} not warmed: another batching config rejects requests "
                     f"larger than {limit}; for a repository only its servers load, warm for it alone "
                     f"(detserve export --warmup-for gpu|cpu for the shipped configs, or --batching-config {source})")
    if not warmed:
        warmed = [1]
        notes.append("no formable batch size fits every config's max_batch_size; warming up batch 1 only")
    return BatchSizes(sizes=warmed, sources=list(formed), notes=notes, unwarmed=unwarmed)


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
        inputs = {
            DEFAULT_SIGNATURE: (IMAGES_INPUT, lambda b: tf.make_tensor_proto(np.repeat(image[np.newaxis], b, axis=0))),
            BYTES_SIGNATURE: (ENCODED_INPUT, lambda b: tf.make_tensor_proto([jpeg] * b, dtype=tf.string, shape=[b])),
        }
        for signature in WARMUP_SIGNATURES:
            key, make = inputs[signature]
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
                      signatures=list(WARMUP_SIGNATURES), size_bytes=path.stat().st_size,
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

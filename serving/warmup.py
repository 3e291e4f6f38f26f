"""Replay a version's ``assets.extra/tf_serving_warmup_requests`` before it serves, as TF Serving does.

Each PredictLog's request goes through the data plane's predict sequence (signature, validation, batching with
the server's ``max_batch_size`` and ``allowed_batch_sizes``), so every batch shape the warmup file covers has
run once; any failure fails the load. As TF Serving's ``RunSavedModelWarmup`` (one warmup thread by default),
records run one at a time, from the loading thread. Unlike TF Serving, whose warmup goes through the shared
batch scheduler, they do not enter the live batch queues, the batch threads or the request pool: a private
one-thread scheduler with the same options pads and checks them, so live requests never wait behind a warmup
batch. The cores themselves are still shared (docs/serving.md "## Versions").
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time

from .batching import BatchScheduler
from .codec import predict_call
from .errors import ServingError
from .predict import DataPlane
from .servable import Servable

log = logging.getLogger(__name__)


class _CallerThread(concurrent.futures.Executor):
    """Runs each submitted call at once on the submitting thread (warmup of an unbatched signature)."""

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def replay_warmup(plane: DataPlane, servable: Servable) -> None:
    records = servable.warmup_records()
    if not records:
        return
    scheduler = None
    if plane.scheduler is not None:
        # One batch thread and no batching window: a record's batch runs as soon as it is submitted.
        options = dataclasses.replace(plane.scheduler.options, num_batch_threads=1, batch_timeout_s=0.0)
        scheduler = BatchScheduler(options, plane.metrics)
    loading = DataPlane(plane.manager, _CallerThread(), scheduler, plane.limits, plane.metrics)
    started = time.monotonic()
    replayed = 0
    try:
        for index, record in enumerate(records):
            kind = record.WhichOneof("log_type")
            if kind != "predict_log":
                log.warning("%s version %d: warmup record %d is a %s, which this server does not serve; skipped",
                            servable.name, servable.version, index, kind)
                continue
            try:
                loading.predict_loading(servable, predict_call(record.predict_log.request, loading.limits.max_message_bytes))
            except ServingError as error:
                raise ServingError(error.code, f"warmup record {index}: {error.message}") from None
            replayed += 1
            time.sleep(0)  # let threads waiting for the GIL (the event loop) run between records
    finally:
        if scheduler is not None:
            scheduler.stop()
    log.info("%s version %d: replayed %d warmup record(s) in %.1f s", servable.name, servable.version, replayed,
             time.monotonic() - started)

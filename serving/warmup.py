"""Replay a version's ``assets.extra/tf_serving_warmup_requests`` before it serves, as TF Serving does.

Each PredictLog's request goes through the data plane like a gRPC request (batching included), so every batch
shape the warmup file covers has run once; any failure fails the load.
"""

from __future__ import annotations

import logging

from .codec import predict_call
from .errors import ServingError
from .predict import DataPlane
from .servable import Servable

log = logging.getLogger(__name__)


def replay_warmup(plane: DataPlane, servable: Servable) -> None:
    records = servable.warmup_records()
    replayed = 0
    for index, record in enumerate(records):
        kind = record.WhichOneof("log_type")
        if kind != "predict_log":
            log.warning("%s version %d: warmup record %d is a %s, which this server does not serve; skipped",
                        servable.name, servable.version, index, kind)
            continue
        try:
            plane.predict_loading(servable, predict_call(record.predict_log.request))
        except ServingError as error:
            raise ServingError(error.code, f"warmup record {index}: {error.message}") from None
        replayed += 1
    if records:
        log.info("%s version %d: replayed %d warmup record(s)", servable.name, servable.version, replayed)

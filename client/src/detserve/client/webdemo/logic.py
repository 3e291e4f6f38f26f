"""What the page shows, without Gradio: one server call per image, then filtering, table rows and messages.

The page asks the server once per image at :data:`DETECT_THRESHOLD` and keeps every detection; moving the
score slider only re-filters and redraws those (no new call), so the slider answers at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..detections import Detection
from ..detector import Detector
from ..draw import annotate
from ..errors import DeadlineExceeded, DetserveClientError, InvalidInput, ModelNotFound, ServerUnavailable

__all__ = ["DETECT_THRESHOLD", "TABLE_HEADERS", "Answer", "ask", "above", "table_rows", "count_text",
           "status_text", "error_text", "render"]

# Low enough to keep what any useful slider position shows; the model's own top-k caps the count.
DETECT_THRESHOLD = 0.01
TABLE_HEADERS = ["label", "score", "xmin", "ymin", "xmax", "ymax"]


@dataclass(frozen=True)
class Answer:
    """One image's detections (at DETECT_THRESHOLD) and who answered, how fast."""

    detections: tuple[Detection, ...]
    model: str
    version: int | None
    latency_ms: float


def ask(detector: Detector, image: np.ndarray) -> Answer:
    """Detect in ``image`` (HxWx3 uint8 RGB) through ``detector``; the latency is the Predict round trip."""
    # Metadata first (cached by the client after the first image), so the latency is the detection alone.
    meta = detector.metadata(class_names=True)
    start = time.perf_counter()
    detections = detector.detect(image, score_threshold=DETECT_THRESHOLD)
    latency_ms = (time.perf_counter() - start) * 1000
    return Answer(tuple(detections), meta.model, meta.version, latency_ms)


def above(detections: Sequence[Detection], threshold: float) -> list[Detection]:
    return [d for d in detections if d.score >= threshold]


def table_rows(detections: Sequence[Detection]) -> list[list]:
    """One row per detection: label, score (3 decimals), box in pixels of the original image (1 decimal)."""
    return [[d.label, round(d.score, 3), *(round(v, 1) for v in d.box)] for d in detections]


def count_text(count: int, threshold: float) -> str:
    return f"{count} detection{'' if count == 1 else 's'} ≥ {threshold:.2f}"


def status_text(answer: Answer, server: str) -> str:
    version = f"version {answer.version}" if answer.version is not None else "version ?"
    return f"model `{answer.model}` {version} at {server} answered in {answer.latency_ms:.1f} ms (round trip)"


def error_text(error: Exception, server: str, model: str) -> str:
    """A sentence for the page: what went wrong and what to check, with the client's own message."""
    detail = " ".join(str(error).split())
    if isinstance(error, ServerUnavailable):
        hint = f"The server at {server} cannot be reached: is it running, and is the address right?"
    elif isinstance(error, ModelNotFound):
        hint = f"The server at {server} does not serve model '{model}' (or that version/label/signature)."
    elif isinstance(error, DeadlineExceeded):
        hint = f"The server at {server} did not answer in time."
    elif isinstance(error, InvalidInput):
        hint = "The server or the client refused this image."
    elif isinstance(error, DetserveClientError):
        hint = "The request failed."
    else:
        hint = "Unexpected error."
    return f"⚠️ {type(error).__name__}: {hint} ({detail})"


def render(image: np.ndarray, answer: Answer, threshold: float) -> tuple[Image.Image, list[list], str]:
    """The annotated image, the table rows and the count text for ``threshold``."""
    kept = above(answer.detections, threshold)
    return annotate(image, kept), table_rows(kept), count_text(len(kept), threshold)

"""What a detection is, and how the model's output tensors become :class:`Detection` objects (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .contract import (
    CLASS_NAMES_OUTPUT,
    DETECTION_BOXES,
    DETECTION_CLASSES,
    DETECTION_OUTPUTS,
    DETECTION_SCORES,
    NUM_DETECTIONS,
)
from .images import LoadedImage

__all__ = ["Box", "Detection", "detections_from"]


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
    ``extras`` holds this detection's value of every other per-detection output the contract lists
    (``DETECTION_OUTPUTS``), so a new output tensor reaches users without a change here.
    """

    label: str
    class_id: int
    score: float
    box: Box
    box_normalized: Box
    extras: dict[str, Any] = field(default_factory=dict, hash=False)  # a dict: Detection stays hashable

    def to_dict(self) -> dict[str, Any]:
        result = {"label": self.label, "class_id": self.class_id, "score": self.score,
                  "box": dict(self.box._asdict()), "box_normalized": dict(self.box_normalized._asdict())}
        if self.extras:
            result["extras"] = dict(self.extras)
        return result


# Outputs the fields above are made of; any other contract output with one value per detection slot is an extra.
_KNOWN_OUTPUTS = {DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES, NUM_DETECTIONS, CLASS_NAMES_OUTPUT}


def detections_from(outputs: dict[str, np.ndarray], row: int, image: LoadedImage, score_threshold: float,
                    max_detections: int | None, class_names: dict[int, str] | None) -> list[Detection]:
    """Row ``row`` of a detection signature's outputs (which hold every NUMERIC_OUTPUTS key), for ``image``.

    The label is the model's own ``detection_class_names``, else ``class_names``, else the id as text; at most
    ``num_detections`` detections, in the model's order (score, descending).
    """
    boxes = np.asarray(outputs[DETECTION_BOXES][row], dtype=np.float64)
    scores = np.asarray(outputs[DETECTION_SCORES][row], dtype=np.float64)
    classes = np.asarray(outputs[DETECTION_CLASSES][row], dtype=np.float64)
    count = min(int(round(float(outputs[NUM_DETECTIONS][row]))), len(scores))
    names = outputs.get(CLASS_NAMES_OUTPUT)
    extras = {key: np.asarray(outputs[key][row]) for key in DETECTION_OUTPUTS
              if key not in _KNOWN_OUTPUTS and key in outputs and np.ndim(outputs[key]) >= 2
              and np.shape(outputs[key])[1] == len(scores)}
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
                                Box(xmin, ymin, xmax, ymax),
                                {key: _plain(column[j]) for key, column in extras.items()}))
        if max_detections is not None and len(result) >= max_detections:
            break
    return result


def _plain(value: np.ndarray) -> Any:
    """A numpy element or row as Python numbers/strings/lists (what to_dict's JSON can hold)."""
    value = value.tolist()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

"""The metrics table (as the original study printed it) and ``metrics.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco_metrics import PER_CLASS_AP50, SUMMARY_KEYS, CocoResult

METRICS_FILENAME = "metrics.json"
NOT_AVAILABLE = "n/a"


def _format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE
    return f"{value:.4f}"


def format_table(metrics: Mapping[str, float | None], title: str | None = None) -> str:
    """One metric per line: TFOD2's name on the left, the value (4 decimals or n/a) on the right.

    The twelve COCO summary metrics come first in TFOD2's order, then per-class AP@.50 in the
    order the classes appear in ``metrics`` (label-map order when it comes from CocoEvaluator).
    """
    rows = [(name, metrics.get(name)) for name in SUMMARY_KEYS]
    rows += [(name, value) for name, value in metrics.items() if name.startswith(PER_CLASS_AP50)]
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {_format_value(value):>8}" for name, value in rows]
    return "\n".join(lines)


def metrics_document(
    result: CocoResult,
    model: Mapping[str, Any] | None = None,
    data: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the metrics, per-class details, counts and what was evaluated."""
    document: dict[str, Any] = {
        "metrics": dict(result.metrics),
        "per_class": {name: dict(values) for name, values in result.per_class.items()},
        "num_images": result.num_images,
        "num_groundtruth": result.num_groundtruth,
        "num_detections": result.num_detections,
        "model": dict(model or {}),
        "data": data,
    }
    document.update(extra or {})
    return document


def _json_safe(value: Any) -> Any:
    # NaN is not JSON; a metric without a value is null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_metrics_json(document: Mapping[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")
    return path


def read_metrics_json(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())

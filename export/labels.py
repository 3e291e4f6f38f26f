"""The label map a version ships in ``assets/``: read, checked against the model's classes, or made up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from detserve.client.contract import LABEL_ID_OFFSET

from .errors import ExportError


def load_label_map(path: Path | str, num_classes: int | None) -> tuple[dict[int, str], str]:
    """({id: name}, the file's text) of ``label_map.pbtxt``, whose ids must be 1..num_classes (unchecked if None)."""
    from detserve.training.data.label_map import LabelMapError, read_label_map

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"label map not found: {path}")
    try:
        label_map = read_label_map(path)
    except LabelMapError as error:
        raise ExportError(str(error)) from error
    _check_ids(label_map, num_classes, str(path))
    return label_map, path.read_text()


def _check_ids(label_map: Mapping[int, str], num_classes: int | None, source: str) -> None:
    if num_classes is None:
        return
    expected = set(range(LABEL_ID_OFFSET, num_classes + LABEL_ID_OFFSET))
    if set(label_map) != expected:
        raise ExportError(f"label map {source} has ids {sorted(label_map)} but the model has {num_classes} classes "
                          f"(ids 1..{num_classes}); pass the label map it was trained with (--label-map)")


def placeholder_label_map(num_classes: int, scratch: Path) -> tuple[dict[int, str], str]:
    """``class_1..class_N``, written by training's label-map writer (through the file ``scratch``, removed)."""
    from detserve.training.data.label_map import write_label_map

    label_map = write_label_map([f"class_{i}" for i in range(LABEL_ID_OFFSET, num_classes + LABEL_ID_OFFSET)],
                                scratch)
    text = scratch.read_text()
    scratch.unlink()
    return label_map, text

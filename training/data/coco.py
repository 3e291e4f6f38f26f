"""COCO detection JSON (``images`` / ``annotations`` / ``categories``, bbox = [x, y, width, height]).

A file that is not JSON or lacks the three top-level lists cannot be read at all (DatasetFormatError);
a bad entry inside it is a named problem and is skipped. ``iscrowd`` boxes are kept and flagged
difficult, so evaluation ignores them the way COCO ignores crowd regions.
Problems name the annotation by its ``id`` (the object index in the report).
"""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

from .records import BoxObject, Dataset, ImageRecord
from .report import (
    IGNORED,
    SKIPPED_IMAGE,
    SKIPPED_OBJECT,
    USED_IMAGE_SIZE,
    DatasetFormatError,
    ValidationReport,
)


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DatasetFormatError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: top level is {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{path}: '{key}' is missing or not a list")
    return data


def read_coco(annotations: Path | str, images: Path | str | None, report: ValidationReport) -> Dataset:
    """Read a COCO json; image ``file_name``s are relative to ``images`` (default: the json's folder).

    ``class_names`` are the category names in category-id order.
    """
    path = Path(annotations)
    data = _load(path)
    images_dir = Path(images) if images is not None else path.parent
    source = str(path)

    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str) and cat["name"]):
            report.add("bad_field", source, field=f"categories[{i}]", value=json.dumps(cat), action=IGNORED)
            continue
        categories[cat["id"]] = cat["name"]

    records: dict[int, ImageRecord] = {}
    for i, entry in enumerate(data["images"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("file_name"), str)):
            report.add("bad_field", source, field=f"images[{i}]", value=json.dumps(entry), action=SKIPPED_IMAGE)
            continue
        if entry["id"] in records:
            report.add("bad_field", source, field=f"images[{i}].id", value=f"duplicate id {entry['id']}", action=SKIPPED_IMAGE)
            continue
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            report.add("size_missing", f"{source}:{entry['file_name']}", field="width,height",
                       value=f"{width}x{height}", action=USED_IMAGE_SIZE)
            width = height = 0
        records[entry["id"]] = ImageRecord(
            image_path=images_dir / entry["file_name"], width=width, height=height,
            source=f"{source}:{entry['file_name']}",
        )

    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            report.add("bad_field", source, field=f"annotations[{i}]", value=json.dumps(ann), action=SKIPPED_OBJECT)
            continue
        ann_id = ann.get("id") if isinstance(ann.get("id"), int) else i
        record = records.get(ann.get("image_id"))  # type: ignore[arg-type]
        if record is None:
            report.add("bad_field", source, object_index=ann_id, field="image_id",
                       value=repr(ann.get("image_id")), action=SKIPPED_OBJECT)
            continue
        label = categories.get(ann.get("category_id"))  # type: ignore[arg-type]
        if label is None:
            report.add("unknown_class", record.source, object_index=ann_id, field="category_id",
                       value=repr(ann.get("category_id")), action=SKIPPED_OBJECT)
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            report.add("bad_box_value", record.source, object_index=ann_id, field="bbox",
                       value=json.dumps(bbox), action=SKIPPED_OBJECT)
            continue
        x, y, w, h = (float(v) for v in bbox)
        record.objects.append(
            BoxObject(label, x, y, x + w, y + h, difficult=bool(ann.get("iscrowd", 0)), source_index=ann_id)
        )

    class_names = list(dict.fromkeys(name for _, name in sorted(categories.items())))
    return Dataset(records=list(records.values()), class_names=class_names)

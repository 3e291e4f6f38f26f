"""Checks that apply to every format, after a reader has produced ImageRecords.

Rules (docs/data.md has the table):
- image missing / not an image / fails to decode (truncated, corrupt): the image is skipped;
- the same image listed twice: the second listing is skipped;
- RGBA / LA, grayscale, palette, CMYK, 16-bit: converted to 8-bit RGB when written, counted;
- annotated size differs from the real one: the real size is used (boxes are checked against it);
- box with zero or negative width/height: object skipped;
- box crossing the border by at most ``box_tolerance`` px (2 by default; annotation tools often write
  xmax = width + 1): clipped to the image, counted; by more, or entirely outside: object skipped.
  Boxes touching the border exactly are valid and untouched;
- object whose class is not in the user's class list: object skipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from tqdm import tqdm

from .images import ImageInfo, ImageLoadError, inspect_image
from .records import BoxObject, Dataset, ImageRecord
from .report import (
    CLIPPED,
    CONVERTED,
    NOTED,
    SKIPPED_IMAGE,
    SKIPPED_OBJECT,
    USED_IMAGE_SIZE,
    ValidationReport,
)

BOX_TOLERANCE_PX = 2.0


def _fmt(value: float) -> str:
    return f"{value:g}"


def _box_value(obj: BoxObject, width: int, height: int) -> str:
    coords = ",".join(f"{k}={_fmt(getattr(obj, k))}" for k in ("xmin", "ymin", "xmax", "ymax"))
    return f"{coords} in {width}x{height}"


def check_box(
    obj: BoxObject, width: int, height: int, source: str, report: ValidationReport,
    box_tolerance: float = BOX_TOLERANCE_PX,
) -> BoxObject | None:
    """The object, clipped if it overshoots by <= ``box_tolerance`` px, or None (reported) if unusable."""
    index = obj.source_index
    coords = (obj.xmin, obj.ymin, obj.xmax, obj.ymax)
    if not all(math.isfinite(c) for c in coords):
        report.add("bad_box_value", source, object_index=index, field="bndbox",
                   value=_box_value(obj, width, height), action=SKIPPED_OBJECT)
        return None
    if obj.xmax <= obj.xmin or obj.ymax <= obj.ymin:
        report.add("box_zero_area", source, object_index=index, field="bndbox",
                   value=_box_value(obj, width, height), action=SKIPPED_OBJECT)
        return None
    xmin, ymin = max(obj.xmin, 0.0), max(obj.ymin, 0.0)
    xmax, ymax = min(obj.xmax, float(width)), min(obj.ymax, float(height))
    overshoot = max(-obj.xmin, -obj.ymin, obj.xmax - width, obj.ymax - height)
    if xmax <= xmin or ymax <= ymin or overshoot > box_tolerance:
        report.add("box_outside_image", source, object_index=index, field="bndbox",
                   value=_box_value(obj, width, height), action=SKIPPED_OBJECT)
        return None
    if overshoot > 0:
        report.add("box_clipped", source, object_index=index, field="bndbox",
                   value=f"{_box_value(obj, width, height)} (by {_fmt(overshoot)} px)", action=CLIPPED)
        return dataclasses.replace(obj, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)
    return obj


def _check_image(record: ImageRecord, report: ValidationReport) -> ImageInfo | None:
    image = str(record.image_path)
    try:
        info = inspect_image(record.image_path)
    except ImageLoadError as e:
        listed_by = f" (listed in {record.source})" if record.source and record.source != image else ""
        report.add(e.kind, image, field="image", value=f"{e}{listed_by}", action=SKIPPED_IMAGE)
        return None
    if info.conversion is not None:
        # PIL calls a 16-bit RGB PNG "RGB"; say what it really is.
        mode = f"{info.mode} {info.bit_depth}-bit" if info.bit_depth > 8 and info.mode in ("RGB", "RGBA") else info.mode
        report.add(info.conversion, image, field="mode", value=mode, action=CONVERTED)
    if info.exif_orientation != 1:
        # Kept as stored (see images.py); worth a look if the boxes seem rotated.
        report.add("exif_orientation", image, field="orientation", value=info.exif_orientation, action=NOTED)
    if (record.width, record.height) not in ((0, 0), (info.width, info.height)):
        report.add("size_mismatch", record.source or image, field="size",
                   value=f"annotation {record.width}x{record.height}, image {info.width}x{info.height}",
                   action=USED_IMAGE_SIZE)
    return info


def validate_dataset(
    dataset: Dataset, report: ValidationReport, *, box_tolerance: float = BOX_TOLERANCE_PX, progress: bool = False
) -> tuple[Dataset, dict[str, ImageInfo]]:
    """Check every image (decoding it) and box. Returns the usable records and each kept image's info by key."""
    kept: list[ImageRecord] = []
    infos: dict[str, ImageInfo] = {}
    first_source: dict[str, str] = {}
    for record in tqdm(dataset.records, desc="validate", unit="img", disable=not progress):
        if record.key in first_source:
            report.add("duplicate_image", record.source or str(record.image_path), field="image",
                       value=f"{record.image_path.name} already listed by {first_source[record.key]}",
                       action=SKIPPED_IMAGE)
            continue
        first_source[record.key] = record.source or str(record.image_path)
        info = _check_image(record, report)
        if info is None:
            continue
        objects = [
            checked for obj in record.objects
            if (checked := check_box(obj, info.width, info.height, record.source, report, box_tolerance)) is not None
        ]
        kept.append(dataclasses.replace(record, width=info.width, height=info.height, objects=objects))
        infos[record.key] = info
    return Dataset(records=kept, class_names=list(dataset.class_names)), infos


def restrict_classes(dataset: Dataset, classes: Iterable[str], report: ValidationReport) -> Dataset:
    """Keep only objects whose label is in ``classes`` (reporting the others); class order = ``classes``."""
    allowed = list(classes)
    records = []
    for record in dataset.records:
        objects = []
        for obj in record.objects:
            if obj.label in allowed:
                objects.append(obj)
            else:
                report.add("unknown_class", record.source, object_index=obj.source_index, field="name",
                           value=obj.label, action=SKIPPED_OBJECT)
        records.append(dataclasses.replace(record, objects=objects))
    return Dataset(records=records, class_names=allowed)

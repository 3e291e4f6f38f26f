"""`detserve detect`'s result formats: table, json, jsonl, csv and COCO results JSON.

A writer gets one :class:`Record` per image or video frame as results arrive (table, jsonl and csv print
them at once, so a long video or a camera shows results while it runs; json and coco print one document
at the end). Each writer prints through ``echo`` (one call per line or document), so the caller decides
where output goes (stdout, around a progress bar).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .detections import Detection
from .errors import InvalidInput

__all__ = ["FORMATS", "Record", "Writer", "make_writer", "coco_image_ids", "CSV_COLUMNS"]

FORMATS = ("table", "json", "jsonl", "csv", "coco")
CSV_COLUMNS = ("source", "frame", "timestamp", "label", "class_id", "score", "xmin", "ymin", "xmax", "ymax",
               "width", "height")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Record:
    """The detections in one image or frame. ``index``: 1-based position among the inputs read, in order."""

    source: str
    index: int
    width: int
    height: int
    detections: Sequence[Detection]
    frame: int | None = None
    timestamp: float | None = None
    annotated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"image": self.source, "width": self.width, "height": self.height}
        if self.frame is not None:
            result.update(frame=self.frame, timestamp=self.timestamp)
        result.update(detections=[d.to_dict() for d in self.detections], annotated=self.annotated)
        return result


class Writer:
    def __init__(self, echo: Echo):
        self.echo = echo

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Print what the format prints at the end (json, coco)."""


def table(record: Record) -> str:
    name = record.source if record.frame is None else f"{record.source} frame {record.frame} ({record.timestamp:.3f} s)"
    count = len(record.detections)
    lines = [f"{name} ({record.width}x{record.height}): {count} detection{'s' if count != 1 else ''}"
             + (f" -> {record.annotated}" if record.annotated else "")]
    if record.detections:
        lines.append(f"  {'label':<24} {'class':>5} {'score':>6} {'xmin':>8} {'ymin':>8} {'xmax':>8} {'ymax':>8}")
        for d in record.detections:
            lines.append(f"  {d.label[:24]:<24} {d.class_id:>5} {d.score:>6.3f} {d.box.xmin:>8.1f} {d.box.ymin:>8.1f} "
                         f"{d.box.xmax:>8.1f} {d.box.ymax:>8.1f}")
    return "\n".join(lines)


class TableWriter(Writer):
    def write(self, record: Record) -> None:
        self.echo(table(record))


class JsonWriter(Writer):
    """A list of :meth:`Record.to_dict` (what `detect --json` always printed), at the end."""

    def __init__(self, echo: Echo):
        super().__init__(echo)
        self.records: list[dict] = []

    def write(self, record: Record) -> None:
        self.records.append(record.to_dict())

    def close(self) -> None:
        self.echo(json.dumps(self.records, indent=2))


class JsonlWriter(Writer):
    def write(self, record: Record) -> None:
        self.echo(json.dumps(record.to_dict()))


class CsvWriter(Writer):
    """One row per detection; ``width``/``height`` are the image's (to normalise the pixel box)."""

    def __init__(self, echo: Echo):
        super().__init__(echo)
        self.echo(self._row(CSV_COLUMNS))

    @staticmethod
    def _row(values) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(values)
        return buffer.getvalue()

    def write(self, record: Record) -> None:
        for d in record.detections:
            self.echo(self._row([record.source, "" if record.frame is None else record.frame,
                                 "" if record.timestamp is None else f"{record.timestamp:.6f}", d.label, d.class_id,
                                 f"{d.score:.6f}", f"{d.box.xmin:.2f}", f"{d.box.ymin:.2f}", f"{d.box.xmax:.2f}",
                                 f"{d.box.ymax:.2f}", record.width, record.height]))


def coco_image_ids(gt_path: Path | str) -> dict[str, int]:
    """``file_name -> id`` of a COCO ground-truth JSON, plus each unique base name (``images/a.jpg`` -> ``a.jpg``)."""
    try:
        images = json.loads(Path(gt_path).read_text())["images"]
        by_name = {str(image["file_name"]): int(image["id"]) for image in images}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"cannot read COCO ground truth {gt_path}: {type(exc).__name__}: {exc}") from exc
    bases: dict[str, list[int]] = {}
    for name, image_id in by_name.items():
        bases.setdefault(Path(name).name, []).append(image_id)
    return {**{base: ids[0] for base, ids in bases.items() if len(ids) == 1}, **by_name}


class CocoWriter(Writer):
    """COCO results (``loadRes``): ``image_id``, ``category_id`` (the model's class id), ``bbox`` [x, y, w, h]
    in pixels, ``score``. Image ids are ``Record.index`` or, with ground truth, the id of its ``file_name``."""

    def __init__(self, echo: Echo, gt_ids: dict[str, int] | None = None):
        super().__init__(echo)
        self.gt_ids = gt_ids
        self.results: list[dict] = []

    def image_id(self, record: Record) -> int:
        if self.gt_ids is None:
            return record.index
        for key in (record.source, Path(record.source).as_posix(), Path(record.source).name):
            if key in self.gt_ids:
                return self.gt_ids[key]
        raise InvalidInput(f"{record.source}: no image with this file_name in the COCO ground truth")

    def write(self, record: Record) -> None:
        image_id = self.image_id(record)
        self.results.extend({"image_id": image_id, "category_id": d.class_id,
                             "bbox": [round(d.box.xmin, 3), round(d.box.ymin, 3), round(d.box.xmax - d.box.xmin, 3),
                                      round(d.box.ymax - d.box.ymin, 3)],
                             "score": round(d.score, 6)} for d in record.detections)

    def close(self) -> None:
        self.echo(json.dumps(self.results))


def make_writer(fmt: str, echo: Echo, *, coco_gt: Path | str | None = None) -> Writer:
    if fmt == "coco":
        return CocoWriter(echo, coco_image_ids(coco_gt) if coco_gt else None)
    writers = {"table": TableWriter, "json": JsonWriter, "jsonl": JsonlWriter, "csv": CsvWriter}
    if fmt not in writers:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    return writers[fmt](echo)

"""The one validated, format-independent form every dataset reader produces.

Boxes are in absolute pixel coordinates of the image as stored on disk (xmin, ymin, xmax, ymax),
the convention PASCAL VOC uses; TFRecords store them normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BoxObject:
    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    # Where the object came from, for problem reports: the <object> position in a VOC file, the COCO
    # annotation id, or the YOLO line number. Not part of equality.
    source_index: int | None = field(default=None, compare=False)

    @property
    def area(self) -> float:
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)


@dataclass
class ImageRecord:
    image_path: Path
    width: int
    height: int
    objects: list[BoxObject] = field(default_factory=list)
    # The annotation file this record came from, for problem reports.
    source: str = ""

    @property
    def key(self) -> str:
        """Stable identity used for splitting and as the TFRecord source_id."""
        return self.image_path.name


@dataclass
class Dataset:
    records: list[ImageRecord]
    class_names: list[str]

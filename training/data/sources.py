"""Reading a dataset as it comes, in any format, with its own split when it declares one.

Dispatches to the format readers (voc.py, coco.py, yolo.py) and the split declarations (own_split.py); COCO
may come as one json per split, YOLO as a data.yaml whose train/val/test entries say where the images are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .coco import read_coco
from .own_split import (
    OwnSplit,
    check_split_names,
    coco_split_files,
    find_voc_split,
    split_of_name,
    yolo_list_files,
    yolo_list_split,
)
from .records import Dataset, ImageRecord
from .report import DatasetFormatError, ValidationReport
from .voc import read_voc
from .yolo import read_names, read_yolo, read_yolo_yaml_splits, yaml_splits

FORMATS = ("voc", "coco", "yolo")
OWN_SPLIT_WHERE = {  # for the error when --split own finds nothing
    "voc": "no ImageSets/Main/{train,val,test,trainval}.txt beside the annotations directory",
    "coco": "give one json per split, or a directory of them, or a json whose name says its split",
    "yolo": "no train.txt/val.txt/test.txt in or beside --images, and no --images with a data.yaml's train/val/test",
}

PathList = Path | str | Sequence[Path | str]


def _paths(value: PathList | None) -> list[Path] | None:
    """One path, a comma-separated string of paths (the CLI's form) or a list -> paths."""
    if value is None:
        return None
    items = [value] if isinstance(value, Path) else value.split(",") if isinstance(value, str) else value
    return [Path(str(v).strip()) for v in items if str(v).strip()]


def _read_coco_files(annotations: PathList, images: PathList | None, report: ValidationReport,
                     own_requested: bool) -> tuple[Dataset, OwnSplit | None]:
    """One json (split from its name only with --split own), or several / a directory: one json per split."""
    paths = _paths(annotations) or []
    if len(paths) == 1 and not paths[0].is_dir():
        image_dirs = _paths(images)
        if image_dirs is not None and len(image_dirs) != 1:
            raise DatasetFormatError(f"--images: {len(image_dirs)} directories for one annotation file")
        dataset = read_coco(paths[0], image_dirs[0] if image_dirs else None, report)
        if not own_requested:
            return dataset, None
        split = split_of_name(paths[0].stem)
        check_split_names([(paths[0], None, split)])
        own = OwnSplit(source=str(paths[0]))
        for record in dataset.records:
            own.add(record.key, split, str(paths[0]))  # type: ignore[arg-type]
        return dataset, own
    files = coco_split_files(paths, _paths(images))
    check_split_names(files)
    own = OwnSplit(source=", ".join(f"{split}: {path}" for path, _, split in files))
    records: list[ImageRecord] = []
    class_names: list[str] = []
    for path, image_dir, split in files:
        part = read_coco(path, image_dir, report)
        for record in part.records:
            own.add(record.key, split, str(path))  # type: ignore[arg-type]
        records.extend(part.records)
        class_names.extend(part.class_names)
    return Dataset(records=records, class_names=list(dict.fromkeys(class_names))), own


def _read_yolo_source(images: Path | None, annotations: Path | None, names: Path,
               report: ValidationReport) -> tuple[Dataset, OwnSplit | None]:
    """--images: that folder, split by train.txt/val.txt/test.txt found in or beside it; no --images: the
    data.yaml's train/val/test entries give the images and the split."""
    if images is None:
        read_names(names)  # a missing or broken names file is the error to show first
        if not yaml_splits(names):
            raise DatasetFormatError("yolo needs the images directory, or a data.yaml with train/val/test entries "
                                     f"as --names ({names} has none)")
        dataset, files_by_split = read_yolo_yaml_splits(names, report)
        own = OwnSplit(source=f"{names} ({', '.join(files_by_split)})")
        for split, files in files_by_split.items():
            for image in files:
                own.add(image.name, split, f"{names} {split}")
        return dataset, own
    dataset = read_yolo(images, annotations, names, report)
    lists = yolo_list_files(images)
    return dataset, yolo_list_split(lists) if lists else None


def read_dataset(fmt: str, report: ValidationReport, annotations: PathList | None, images: PathList | None,
                  names: Path | str | None, own_requested: bool = False) -> tuple[Dataset, OwnSplit | None]:
    """Dispatch to the reader of ``fmt``: voc (annotations dir, images optional), coco (annotations json(s) or
    a directory of them, images optional), yolo (images dir or data.yaml splits, names file, annotations =
    labels dir optional). Also returns the dataset's own split when it declares one."""
    if fmt == "voc":
        if annotations is None:
            raise DatasetFormatError("voc needs the annotations directory")
        return read_voc(annotations, images, report), find_voc_split(annotations)  # type: ignore[arg-type]
    if fmt == "coco":
        if annotations is None:
            raise DatasetFormatError("coco needs the annotations json")
        return _read_coco_files(annotations, images, report, own_requested)
    if fmt == "yolo":
        if names is None:
            raise DatasetFormatError("yolo needs the names file (txt or data.yaml)")
        return _read_yolo_source(None if images is None else Path(images),  # type: ignore[arg-type]
                          None if annotations is None else Path(annotations), Path(names), report)  # type: ignore[arg-type]
    raise DatasetFormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")

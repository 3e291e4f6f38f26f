"""A dataset's own train/val/test split, as datasets come: VOC ``ImageSets/Main/*.txt``, one COCO json per
split, YOLO ``train.txt``/``val.txt``/``test.txt`` image lists or ``data.yaml`` train/val/test entries.

This module only finds and reads the split declarations; :func:`own_split_records` applies one to the
validated records (images in no list are reported and skipped, list entries that match no image are
reported). A split that puts one image in two splits is a DatasetFormatError (it would leak test data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import ImageRecord
from .report import IGNORED, SKIPPED_IMAGE, DatasetFormatError, ValidationReport
from .split import SPLITS

# Words in a file or folder name that say which split it is (Roboflow writes valid/, COCO train2017).
SPLIT_WORDS = {"train": "train", "training": "train", "trainval": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
LIST_NAMES = ("train.txt", "val.txt", "valid.txt", "test.txt")  # YOLO / darknet image lists


@dataclass
class OwnSplit:
    """Which split each image belongs to, by image file name (VOC: by file stem, VOC ids have no extension)."""

    source: str  # for the summary and dataset.json, e.g. "ImageSets/Main/{train,val}.txt in /data/VOC2007"
    assignment: dict[str, str] = field(default_factory=dict)  # name -> split
    listed_in: dict[str, str] = field(default_factory=dict)  # name -> "file line N", for problems
    by_stem: bool = False

    def name_of(self, record: ImageRecord) -> str:
        return record.image_path.stem if self.by_stem else record.image_path.name

    def add(self, name: str, split: str, where: str) -> None:
        if name in self.assignment and self.assignment[name] != split:
            raise DatasetFormatError(f"{where}: {name!r} is in split {split} and also in {self.assignment[name]} "
                                     f"({self.listed_in[name]}); an image can be in one split only")
        self.assignment.setdefault(name, split)
        self.listed_in.setdefault(name, where)


def split_of_name(name: str) -> str | None:
    """'instances_val2017' -> 'val'; None when the name has no split word or more than one."""
    found = {SPLIT_WORDS[t] for t in re.findall(r"[a-z]+", name.lower()) if t in SPLIT_WORDS}
    return found.pop() if len(found) == 1 else None


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, first token) of each non-empty line."""
    return [(n, line.split()[0]) for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
            if line.strip()]


def find_voc_split(annotations: Path | str) -> OwnSplit | None:
    """``ImageSets/Main/{train,val,test}.txt`` beside the annotations directory (``trainval.txt`` is used as
    train only when there is neither train.txt nor val.txt). None when there is none."""
    annotations = Path(annotations)
    ann_dir = annotations if annotations.is_dir() else annotations.parent
    main = ann_dir.parent / "ImageSets" / "Main"
    files = {s: main / f"{s}.txt" for s in ("train", "val", "test", "trainval")}
    present = {s: p for s, p in files.items() if p.is_file()}
    if "train" in present or "val" in present:
        present.pop("trainval", None)
    if not present:
        return None
    own = OwnSplit(source=f"{main}/{{{','.join(present)}}}.txt", by_stem=True)
    for name, path in present.items():
        split = "train" if name == "trainval" else name
        for line_no, image_id in _read_list(path):
            own.add(image_id, split, f"{path} line {line_no}")
    return own


def yolo_list_files(images_dir: Path) -> dict[str, Path]:
    """train.txt / val.txt (or valid.txt) / test.txt in the images directory or its parent, by split."""
    for folder in (images_dir, images_dir.parent):
        found = {SPLIT_WORDS[Path(n).stem]: folder / n for n in LIST_NAMES if (folder / n).is_file()}
        if found:
            return found
    return {}


def read_image_list(path: Path) -> list[tuple[int, Path]]:
    """Image paths in a YOLO list file, relative ones resolved against the list's folder."""
    return [(n, entry if (entry := Path(text)).is_absolute() else path.parent / entry)
            for n, text in _read_list(path)]


def yolo_list_split(lists: dict[str, Path]) -> OwnSplit:
    """Split by image file name from YOLO list files (entries may be paths from another machine)."""
    own = OwnSplit(source=", ".join(str(p) for p in lists.values()))
    for split, path in lists.items():
        for line_no, image in read_image_list(path):
            own.add(image.name, split, f"{path} line {line_no}")
    return own


def coco_split_files(annotations: Sequence[Path], images: Sequence[Path] | None) -> list[tuple[Path, Path | None, str | None]]:
    """(json, images dir or None, split from its name) for each json given. ``annotations``: json files or
    one directory of them (``*.json`` in it, else ``*/*.json`` as Roboflow exports). ``images``: one
    directory for all, or one per json in the same order."""
    in_subfolders = False
    if len(annotations) == 1 and annotations[0].is_dir():
        folder = annotations[0]
        jsons = sorted(folder.glob("*.json"))
        if not jsons:
            jsons, in_subfolders = sorted(folder.glob("*/*.json")), True
        if not jsons:
            raise DatasetFormatError(f"no .json files in {folder} (nor in its subfolders)")
    else:
        jsons = list(annotations)
    if images is not None and len(images) not in (1, len(jsons)):
        raise DatasetFormatError(f"--images: {len(images)} directories for {len(jsons)} annotation files; "
                                 "give one for all or one per file, in the same order")
    image_dirs = [None] * len(jsons) if images is None else list(images) * (len(jsons) // len(images))
    # A subfolder's name says the split (train/_annotations.coco.json); elsewhere only the file name does.
    return [(j, d, split_of_name(j.stem) or (split_of_name(j.parent.name) if in_subfolders else None))
            for j, d in zip(jsons, image_dirs, strict=True)]


def check_split_names(files: list[tuple[Path, Path | None, str | None]]) -> None:
    """Every file must name its split, and no split may come from two files."""
    by_split: dict[str, Path] = {}
    for path, _, split in files:
        if split is None:
            raise DatasetFormatError(f"{path}: cannot tell which split it is; its name must contain one of "
                                     f"{', '.join(sorted(SPLIT_WORDS))}")
        if split in by_split:
            raise DatasetFormatError(f"two annotation files for split {split}: {by_split[split]} and {path}; "
                                     "pass --annotations with the ones to use")
        by_split[split] = path


def own_split_records(records: Sequence[ImageRecord], own: OwnSplit,
                      report: ValidationReport) -> dict[str, list[ImageRecord]]:
    """{"train": [...], "val": [...], "test": [...]} as ``own`` says, each sorted by key. An image in no split is
    reported (``not_in_split``) and skipped; a list entry no converted image matches is reported
    (``split_entry_unused``)."""
    result: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    used = set()
    for record in records:
        name = own.name_of(record)
        split = own.assignment.get(name)
        if split is None:
            report.add("not_in_split", record.source or str(record.image_path), field="split",
                       value=f"{record.image_path.name} is in none of {own.source}", action=SKIPPED_IMAGE)
            continue
        result[split].append(record)
        used.add(name)
    for name in sorted(set(own.assignment) - used):
        report.add("split_entry_unused", own.listed_in[name], field="image",
                   value=f"{name}: no such image converted (missing, or skipped above)", action=IGNORED)
    return {s: sorted(rs, key=lambda r: r.key) for s, rs in result.items()}
